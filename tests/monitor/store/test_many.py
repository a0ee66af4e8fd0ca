"""The hot executemany statements sent to the driver (monitor/store/many.py) store what
SQLAlchemy's own executemany stores."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, event, insert, select, text, update

from monitor.metrics.totals import MetricTotal
from monitor.store import Store
from monitor.store.many import execute_many
from monitor.store.models import ChangeRow

ROWS = [{"seq": 1, "kind": "job", "key": "a", "data": {"id": "a", "progress": {"percent": 5.0}},
         "tenant": None},
        {"seq": 2, "kind": "job", "key": "b", "data": None, "tenant": "t1"},
        {"seq": 3, "kind": "worker", "key": "gpu0@vm1", "data": {"name": "gpu0@vm1", "queues": ["x"]},
         "tenant": None}]


def _changes(store: Store) -> list[tuple[Any, ...]]:
    with store.read() as session:
        rows = session.execute(text("SELECT seq, kind, key, data, data IS NULL, tenant "
                                    "FROM changes ORDER BY seq"))
        return [tuple(r) for r in rows]


def test_rows_sent_to_the_driver_are_stored_byte_for_byte_as_sqlalchemy_stores_them(tmp_path: Any) -> None:
    # Given two stores, the same rows (JSON values, a JSON None, SQL NULLs) inserted then updated
    # through SQLAlchemy's executemany in one and through execute_many in the other
    stores = [Store(f"sqlite:///{tmp_path}/{name}.db") for name in ("core", "driver")]
    change = update(ChangeRow).where(ChangeRow.seq == bindparam("at")).values(data=bindparam("new_data"))
    moves = [{"at": 1, "new_data": {"id": "a", "status": "done"}}, {"at": 3, "new_data": None}]
    for store, run in zip(stores, (lambda c, s, r: c.execute(s, r), execute_many), strict=True):
        with store.write() as tx:
            connection = tx.session.connection()
            run(connection, insert(ChangeRow), ROWS)
            run(connection, change, moves)
    # Then both hold the same bytes (JSON null where None was given, never SQL NULL)
    core, driver = (_changes(store) for store in stores)
    assert driver == core
    assert [row[3] for row in driver] == ['{"id": "a", "status": "done"}', "null", "null"]
    for store in stores:
        store.close()


def test_the_rows_go_to_the_driver_as_one_executemany_that_the_engines_events_see(store: Store) -> None:
    # Given a listener on the engine's cursor executions
    seen: list[tuple[str, bool]] = []

    def on_execute(_conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, many: bool) -> None:
        seen.append((statement, many))

    event.listen(store.engine, "before_cursor_execute", on_execute)
    # When three change rows are inserted with execute_many, twice (the second from the cache)
    for first in (0, 10):
        with store.write() as tx:
            execute_many(tx.session.connection(), insert(ChangeRow),
                         [{**row, "seq": row["seq"] + first} for row in ROWS])
    # Then each insert was one executemany of the compiled INSERT
    inserts = [(sql, many) for sql, many in seen if sql.startswith("INSERT INTO changes")]
    assert len(inserts) == 2 and all(many for _, many in inserts)
    assert len(_changes(store)) == 6


def test_a_statement_whose_column_default_the_rows_leave_out_takes_sqlalchemys_path(store: Store) -> None:
    # Given metric totals inserted without their value (a column default SQLAlchemy fills)
    with store.write() as tx:
        execute_many(tx.session.connection(), insert(MetricTotal), [{"name": "n", "labels": "[]"},
                                                                    {"name": "m", "labels": "[]"}])
    # Then both rows hold the default
    with store.read() as session:
        values = {name: value for name, value in session.execute(select(MetricTotal.name, MetricTotal.value))}
    assert values == {"n": 0.0, "m": 0.0}


def test_no_rows_run_nothing(store: Store) -> None:
    # Given no rows, when they are executed, then nothing is written (and nothing fails)
    with store.write() as tx:
        execute_many(tx.session.connection(), insert(ChangeRow), [])
    assert _changes(store) == []
