"""The database engine, and SQLite's pragmas (the schema: :mod:`monitor.store.migrate`).

SQLite by default (WAL, so readers never block the single writer); any SQLAlchemy URL works
(PostgreSQL is tested).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine

#: Execution option that marks a connection as the writer's (BEGIN IMMEDIATE on SQLite).
WRITE_OPTION = "jobqueue_write"


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine for ``url``: SQLite with :func:`sqlite_setup`, others with a pre-ping pool."""
    kwargs: dict[str, Any] = {"echo": echo}
    sqlite = url.startswith("sqlite")
    if sqlite:
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_engine(url, **kwargs)
    if sqlite:
        sqlite_setup(engine)
    return engine


def sqlite_setup(engine: Engine) -> None:
    """WAL, a busy timeout, and real BEGINs (pysqlite's implicit transactions would let a
    "snapshot" read see commits made between its SELECTs)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN")
