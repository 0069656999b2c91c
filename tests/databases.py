"""The PostgreSQL leg of the service tests: a schema of its own per test on 127.0.0.1:5432
(database `test`), dropped afterwards; skipped, with the reason shown, where no server answers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def postgres_url() -> Iterator[str]:
    """Yields a URL whose search path is a new schema; drops the schema when resumed."""
    admin = sa.create_engine(PG)
    try:
        with admin.begin() as c:
            schema = "hws_" + uuid.uuid4().hex[:10]
            c.execute(sa.text(f"CREATE SCHEMA {schema}"))
    except sa.exc.OperationalError as exc:
        pytest.skip(f"PostgreSQL leg skipped: no server answers at 127.0.0.1:5432 ({exc.orig})")
    try:
        yield f"{PG}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as c:
            c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
