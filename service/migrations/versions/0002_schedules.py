"""Cron schedules; jobs remember the schedule firing that created them.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("cron", sa.String(200), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_schedules_next_run_at", "schedules", ["next_run_at"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("schedule_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_jobs_schedule_id", ["schedule_id"])
        batch.create_unique_constraint("uq_jobs_schedule_firing", ["schedule_id", "scheduled_for"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("uq_jobs_schedule_firing", type_="unique")
        batch.drop_index("ix_jobs_schedule_id")
        batch.drop_column("scheduled_for")
        batch.drop_column("schedule_id")
    op.drop_index("ix_schedules_next_run_at", "schedules")
    op.drop_table("schedules")
