"""The database engine, and SQLite's pragmas (the schema: :mod:`monitor.store.migrate`).

SQLite by default (WAL, so readers never block the single writer); any SQLAlchemy URL works
(PostgreSQL is tested). On PostgreSQL through psycopg 3, ``executemany`` runs one statement at a
time (:func:`one_statement_cursor`), never in psycopg's pipeline mode.
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
    if url.startswith("postgresql+psycopg:") or url.startswith("postgresql+psycopg_"):
        kwargs["connect_args"] = {"cursor_factory": one_statement_cursor()}
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


def one_statement_cursor() -> type:
    """A psycopg 3 cursor class whose ``executemany`` sends its rows one statement at a time.

    psycopg runs ``executemany`` in pipeline mode: the rows go out without a Sync until the
    last, and meanwhile PostgreSQL counts the session as active, not idle in a transaction. A
    monitor paused there (SIGSTOP, a frozen VM) would hold its write transaction's lock on the
    writer's lease for good: neither ``idle_in_transaction_session_timeout`` (which
    :class:`monitor.store.lease.WriterLease` sets on every such transaction) nor
    ``statement_timeout`` ends it, so no standby could ever take over. One statement per row
    ends each with a Sync, so a pause anywhere is a bounded idle transaction. ``rowcount`` is
    the sum over the rows, as psycopg's own (the ORM checks it).
    """
    import psycopg

    class OneStatementCursor(psycopg.Cursor[Any]):
        _total: int | None = None

        def executemany(self, query: Any, params_seq: Any, *, returning: bool = False) -> None:
            if returning:  # results of every row kept: only the pipeline does that
                super().executemany(query, params_seq, returning=True)
                return
            total = 0
            for params in params_seq:
                self.execute(query, params)
                total += max(super().rowcount, 0)
            self._total = total

        def execute(self, *args: Any, **kwargs: Any) -> Any:
            self._total = None
            return super().execute(*args, **kwargs)

        @property
        def rowcount(self) -> int:
            return super().rowcount if self._total is None else self._total

    return OneStatementCursor
