"""A trial's recovered quality: the recovery stage's result for a front plan (its quality after
fine-tuning and the recipe), stored after the trial as its host measurement is.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: every stored trial keeps its row as it was, not recovered (SQL NULL).
    with op.batch_alter_table("trials") as t:
        t.add_column(sa.Column("recovered", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trials") as t:
        t.drop_column("recovered")
