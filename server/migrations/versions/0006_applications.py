"""Applications: every model version and every device belongs to one (``default`` until
told otherwise), and operators assign devices to applications by tag.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(
            sa.Column("application", sa.String(128), nullable=False, server_default="default")
        )
        batch.create_index("ix_model_versions_application", ["application"])
    with op.batch_alter_table("devices") as batch:
        batch.add_column(
            sa.Column("application", sa.String(128), nullable=False, server_default="default")
        )
        batch.add_column(
            sa.Column("application_source", sa.String(16), nullable=False, server_default="default")
        )
        batch.add_column(sa.Column("declared_application", sa.String(128), nullable=True))
    op.create_table(
        "application_assignments",
        sa.Column("tag", sa.String(128), primary_key=True),
        sa.Column("application", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("application_assignments")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("declared_application")
        batch.drop_column("application_source")
        batch.drop_column("application")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_index("ix_model_versions_application")
        batch.drop_column("application")
