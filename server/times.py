"""Times in the control plane: UTC, one set of helpers.

The database keeps UTC: PostgreSQL as ``timestamptz``, SQLite as naive text that readers take
as UTC. Comparisons must match what the database hands back, hence both shapes here.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["as_utc", "for_database", "naive_utc", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """Zone-aware UTC; a naive time (SQLite's, or a query without a zone) is taken as UTC."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def naive_utc(moment: datetime) -> datetime:
    """Naive UTC, to compare with what SQLite hands back."""
    return as_utc(moment).replace(tzinfo=None)


def for_database(moment: datetime, dialect: str) -> datetime:
    """A query parameter the database compares correctly with its stored times: naive UTC
    on SQLite (which compares text), zone-aware elsewhere."""
    return naive_utc(moment) if dialect == "sqlite" else as_utc(moment)
