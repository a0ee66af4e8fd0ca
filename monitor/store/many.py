"""The write transaction's hot executemany statements, sent to SQLite's driver as prepared rows.

SQLAlchemy's ``connection.execute(statement, rows)`` rebuilds each row's parameters through the
compiled statement (a dict per row, every bind looked up and processed one by one): on the
writer's hot statements (the plain jobs' inserts and updates, the change log, the timeline, the
metric totals) that was about as much time as SQLite took to run them. :func:`execute_many`
compiles a statement once per pooled connection and set of keys, then turns the rows into
tuples with the same bind processors (the JSON columns serialised as the ORM does) and runs them
with :meth:`~sqlalchemy.engine.Connection.exec_driver_sql` -- the same SQL, the same values, the
engine's events still fire. Other databases take the usual path (their paramstyles differ).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.sql.expression import Executable

#: Key of a pooled connection's ``info`` that holds its compiled statements.
_CACHE = "jobqueue_many"
#: Compiled statements kept per connection (then the cache starts again).
MAX_PREPARED = 500
#: A compiled statement: its SQL, and each positional parameter's name and bind processor.
Prepared = tuple[str, tuple[tuple[str, Callable[[Any], Any] | None], ...]]


def execute_many(connection: Connection, statement: Executable, rows: Sequence[dict[str, Any]]) -> None:
    """Run ``statement`` once per row of ``rows`` (every row with the same keys), as
    ``connection.execute(statement, rows)`` would."""
    if not rows:
        return
    qmark = connection.dialect.paramstyle == "qmark"
    prepared = _prepared(connection, statement, rows[0].keys()) if qmark else None
    if prepared is None:
        connection.execute(statement, list(rows))
        return
    sql, params = prepared
    connection.exec_driver_sql(sql, [tuple(row[name] if process is None else process(row[name])
                                           for name, process in params) for row in rows])


def _prepared(connection: Connection, statement: Executable, keys: Any) -> Prepared | None:
    """``statement`` compiled for ``keys`` (cached on the pooled connection); None when it is
    not a plain positional statement whose every parameter is one of ``keys`` (a column default
    the execution would fill, an expanding ``IN``): those take SQLAlchemy's own path."""
    info = connection.connection.info
    cache: dict[tuple[int, frozenset[str]], tuple[Executable, Prepared | None]] = info.setdefault(_CACHE, {})
    key = (id(statement), frozenset(keys))
    held = cache.get(key)
    if held is not None and held[0] is statement:
        return held[1]
    dialect = connection.dialect
    compiled = statement.compile(dialect=dialect, column_keys=sorted(keys))  # type: ignore[attr-defined]
    names = compiled.positiontup
    prepared: Prepared | None = None
    if names is not None and not compiled.literal_execute_params and not compiled.post_compile_params \
            and all(name in key[1] for name in names):
        # Each bind's type as this dialect implements it (SQLite's JSON, ...), as SQLAlchemy processes it.
        kinds = [compiled.binds[name].type.dialect_impl(dialect) for name in names]
        prepared = (compiled.string,
                    tuple((name, kind.bind_processor(dialect))
                          for name, kind in zip(names, kinds, strict=True)))
    if len(cache) >= MAX_PREPARED:  # the plain jobs' updates: one statement per set of changed columns
        cache.clear()
    cache[key] = (statement, prepared)
    return prepared
