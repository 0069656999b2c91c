"""Device agents (issue 19): registered devices, the measurement tasks the service leases to
them, and the profiles that generate those tasks and fit a target's predictor from the results.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("runtime", sa.String(32), nullable=False),
        sa.Column("threads", sa.Integer(), nullable=False),
        sa.Column("info", sa.JSON(), nullable=True),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tasks_done", sa.Integer(), nullable=False),
    )
    op.create_index("ix_devices_target", "devices", ["target"])
    op.create_table(
        "profiles",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("n_tasks", sa.Integer(), nullable=False),
        sa.Column("fit_id", sa.String(32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_profiles_status", "profiles", ["status"])
    op.create_index("ix_profiles_target", "profiles", ["target"])
    op.create_table(
        "measure_tasks",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("profile_id", sa.String(32), nullable=True),
        sa.Column("job_id", sa.String(32), nullable=True),
        sa.Column("trial", sa.Integer(), nullable=True),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("lease_id", sa.String(32), nullable=True),
        sa.Column("device_id", sa.String(32), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("leases", sa.Integer(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_measure_tasks_profile_id", "measure_tasks", ["profile_id"])
    op.create_index("ix_measure_tasks_target", "measure_tasks", ["target"])
    op.create_index("ix_measure_tasks_status", "measure_tasks", ["status"])


def downgrade() -> None:
    op.drop_table("measure_tasks")
    op.drop_table("profiles")
    op.drop_table("devices")
