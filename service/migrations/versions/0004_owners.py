"""Owners and scopes: tokens carry an owner, scopes, an expiry and a revocation time; jobs,
schedules and fits record their owner; user targets their creator; fits can be cancelled.

Tokens made before this revision keep working as admin tokens of an owner named after them.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as t:
        t.add_column(sa.Column("owner", sa.String(64), nullable=True))
        t.add_column(sa.Column("scopes", sa.String(64), nullable=True))
        t.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        t.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
        t.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    tokens = sa.table(
        "api_tokens",
        sa.column("name", sa.String),
        sa.column("owner", sa.String),
        sa.column("scopes", sa.String),
    )
    op.execute(tokens.update().values(owner=sa.func.substr(tokens.c.name, 1, 64), scopes="read,write,admin"))
    with op.batch_alter_table("api_tokens") as t:
        t.alter_column("owner", existing_type=sa.String(64), nullable=False)
        t.alter_column("scopes", existing_type=sa.String(64), nullable=False)
    with op.batch_alter_table("jobs") as t:
        t.add_column(sa.Column("owner", sa.String(64), nullable=True))
        t.create_index("ix_jobs_owner", ["owner"])
    with op.batch_alter_table("schedules") as t:
        t.add_column(sa.Column("owner", sa.String(64), nullable=True))
    with op.batch_alter_table("fits") as t:
        t.add_column(sa.Column("owner", sa.String(64), nullable=True))
        t.add_column(sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "target_owners",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("target_owners")
    with op.batch_alter_table("fits") as t:
        t.drop_column("cancel_requested")
        t.drop_column("owner")
    with op.batch_alter_table("schedules") as t:
        t.drop_column("owner")
    with op.batch_alter_table("jobs") as t:
        t.drop_index("ix_jobs_owner")
        t.drop_column("owner")
    with op.batch_alter_table("api_tokens") as t:
        for name in ("last_used_at", "revoked_at", "expires_at", "scopes", "owner"):
            t.drop_column(name)
