"""Agents that measure in torch beside ONNX Runtime, nightly drift probes, and every device's
measurement of a trial (issue 19): each measurement task names the runtime its file is for (a
device leases only its runtime's tasks), a schedule may hold a drift probe, a profile remembers
the schedule that fired it, and ``device_measurements`` keeps each device result of a front
plan (a trial of a job costed on several targets is measured on each; re-measured, it keeps its
history).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every task queued before this revision was an ONNX file.
    with op.batch_alter_table("measure_tasks") as t:
        t.add_column(sa.Column("runtime", sa.String(32), nullable=False, server_default="onnxruntime"))
    with op.batch_alter_table("profiles") as t:
        t.add_column(sa.Column("schedule_id", sa.String(32), nullable=True))
        t.create_index("ix_profiles_schedule_id", ["schedule_id"])
    with op.batch_alter_table("schedules") as t:
        t.add_column(sa.Column("drift", sa.JSON(), nullable=True))
    op.create_table(
        "device_measurements",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_device_measurements_job_id", "device_measurements", ["job_id"])


def downgrade() -> None:
    op.drop_table("device_measurements")
    with op.batch_alter_table("schedules") as t:
        t.drop_column("drift")
    with op.batch_alter_table("profiles") as t:
        t.drop_index("ix_profiles_schedule_id")
        t.drop_column("schedule_id")
    with op.batch_alter_table("measure_tasks") as t:
        t.drop_column("runtime")
