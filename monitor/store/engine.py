"""The database engine: SQLite pragmas, and the schema with its one upgrade step.

SQLite by default (WAL, so readers never block the single writer); any SQLAlchemy URL works
(PostgreSQL is tested).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine, event, inspect, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlalchemy.schema import CreateIndex

from monitor.store.counts import job_counts
from monitor.store.models import Base, JobRow, WorkerRow

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


def create_schema(engine: Engine) -> None:
    """Create missing tables and indexes; bring a database of an older monitor up to date
    (the workers' job counters, counted once from the jobs it holds)."""
    Base.metadata.create_all(engine)
    columns = {c["name"] for c in inspect(engine).get_columns("workers")}
    with engine.begin() as conn:
        for table in (JobRow.__table__, WorkerRow.__table__):
            for index in table.indexes:  # type: ignore[attr-defined]  # create_all adds indexes only with a new table
                conn.execute(CreateIndex(index, if_not_exists=True))
        if "ended" not in columns:
            conn.execute(text("ALTER TABLE workers ADD COLUMN ended INTEGER NOT NULL DEFAULT 0"))
            with Session(conn) as session:
                for name, (ended, failed) in job_counts(session).items():
                    session.execute(update(WorkerRow).where(WorkerRow.name == name).values(ended=ended, failed=failed))
