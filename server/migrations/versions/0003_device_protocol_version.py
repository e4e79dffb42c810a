"""The protocol major version each device announced in its hello.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 10:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Every device registered so far spoke version 1, the only one there was.
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("protocol", sa.Integer(), server_default="1", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("protocol")
