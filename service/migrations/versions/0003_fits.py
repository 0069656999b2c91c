"""Predictor fits from uploaded measurement tables.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fits",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("family", sa.String(16), nullable=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("csv_path", sa.Text(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_fits_target", "fits", ["target"])
    op.create_index("ix_fits_status", "fits", ["status"])
    op.create_index("ix_fits_created_at", "fits", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_fits_created_at", "fits")
    op.drop_index("ix_fits_status", "fits")
    op.drop_index("ix_fits_target", "fits")
    op.drop_table("fits")
