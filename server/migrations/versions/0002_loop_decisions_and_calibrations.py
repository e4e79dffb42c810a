"""Loop decisions and per-profile calibrations (the closed compression loop).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 03:56:30.364107
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "calibrations",
        sa.Column("profile", sa.String(length=64), nullable=False),
        sa.Column("calibration", sa.JSON(), nullable=False),
        sa.Column("observations", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("profile"),
    )
    op.create_table(
        "loop_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("loop", sa.String(length=128), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("profile", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(), nullable=True),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("figures", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("loop_decisions", schema=None) as batch_op:
        batch_op.create_index("ix_loop_decisions_loop_round", ["loop", "round"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("loop_decisions", schema=None) as batch_op:
        batch_op.drop_index("ix_loop_decisions_loop_round")

    op.drop_table("loop_decisions")
    op.drop_table("calibrations")
