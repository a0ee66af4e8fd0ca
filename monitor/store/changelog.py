"""The change log: every change bumps one global sequence number.

At commit the writer gives every object an apply touched the next ``seq`` and appends its full
serialised form to ``changes``. A snapshot is read with its ``seq`` in one read transaction, so
"snapshot at N, then every change > N from the change log" has no gap and no duplicate, also
in a process that is not the writer.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from monitor.store.many import execute_many
from monitor.store.medians import ServiceMedians, changed_jobs
from monitor.store.models import ChangeRow, ConnectorRow, CounterRow, ServiceStatRow, WorkerRow
from monitor.store.serialise import job_dict, machine_dict, service_dict, worker_dict
from monitor.store.tx import Change, Tx

#: The change counter, read (locked on PostgreSQL) and set without the ORM (a write
#: transaction's fixed cost: one ORM load and flush of it per transaction was 4% of the writer).
_COUNTER = select(CounterRow.value).where(CounterRow.name == "seq")
_COUNTER_LOCKED = _COUNTER.with_for_update()
_SET_COUNTER = update(CounterRow).where(CounterRow.name == "seq").values(value=bindparam("new_value"))
#: The change rows, one executemany per transaction (:func:`monitor.store.many.execute_many`).
_INSERT_CHANGES = insert(ChangeRow)
#: A service's median, set in place (inserted the first time).
_SET_SERVICE = (update(ServiceStatRow).where(ServiceStatRow.service == bindparam("stat_service"))
                .values(median=bindparam("stat_median"), samples=bindparam("stat_samples"), seq=bindparam("stat_seq")))


def record_changes(tx: Tx, *, lock_counter: bool, medians: ServiceMedians) -> list[Change]:
    """Give every object ``tx`` marked the next seq, and append its full serialised form (or
    null, deleted) to the change log; return what was recorded. ``lock_counter`` takes the
    counter row ``FOR UPDATE`` (PostgreSQL; SQLite's writer already holds the lock).
    ``medians``: the services' windows, moved by the jobs ``tx`` marked (given back with the
    new seq once ``tx`` commits, :attr:`Tx.after_commit`)."""
    session = tx.session
    if not tx.dirty and not tx.deleted:
        return []
    connection = session.connection()
    first = seq = connection.execute(_COUNTER_LOCKED if lock_counter else _COUNTER).scalar_one()
    out: list[Change] = []
    tenants: dict[int, str | None] = {}  # a job change's tenant, by seq
    for (kind, key), tenant in list(tx.deleted.items()):
        seq += 1
        out.append((seq, kind, key, None))
        tenants[seq] = tenant
    # Every object gets its seq first (the ORM's rows then flush once, their changes and seq
    # together), then the plain jobs are written (a service's median may read the jobs
    # table), then each is serialised.
    numbered: list[tuple[int, str, str, Any]] = []
    for kind, key in list(tx.dirty):
        seq += 1
        obj = ServiceStatRow(service=key) if kind == "service" else _obj(tx, kind, key)
        if obj is not None:
            obj.seq = seq
        numbered.append((seq, kind, key, obj))
    session.flush()
    conns = _connectors(tx, sorted(key for kind, key in tx.dirty if kind == "worker"))
    tx.write_plain_jobs(release=False)
    claim = medians.claim(session, first)
    for job_id, gone in changed_jobs(tx.dirty, tx.deleted):
        medians.job_changed(claim, job_id, None if gone else tx.peek_job(job_id))
    for number, kind, key, obj in numbered:
        if obj is None:
            out.append((number, kind, key, None))
            continue
        if kind == "service":
            obj.median, obj.samples = medians.median(claim, session, obj.service)
            _write_service(connection, obj)
            out.append((number, kind, key, service_dict(obj)))
            continue
        out.append((number, kind, key, _serialise(session, kind, obj, tx.now, conns)))
        if kind == "job":
            tenants[number] = obj.tenant
    connection.execute(_SET_COUNTER, {"new_value": seq})
    tx.after_commit.append(lambda: medians.release(claim, seq))
    execute_many(connection, _INSERT_CHANGES,
                 [{"seq": s, "kind": k, "key": key, "data": d, "tenant": tenants.get(s)} for s, k, key, d in out])
    return out


def _connectors(tx: Tx, names: list[str]) -> dict[str, list[ConnectorRow]]:
    """The connectors of the workers ``names`` (after the flush): from the transaction for those
    whose connectors it loaded (:meth:`Tx.connectors_of`), one query for the others."""
    conns, todo = tx.connectors_of(names)
    for start in range(0, len(todo), 500):
        for c in tx.session.scalars(select(ConnectorRow).where(ConnectorRow.worker.in_(todo[start:start + 500]))):
            conns.setdefault(c.worker, []).append(c)
    return conns


def _write_service(connection: Connection, stat: ServiceStatRow) -> None:
    """Store a service's median (a plain row: its old values are never read)."""
    values = {"stat_service": stat.service, "stat_median": stat.median, "stat_samples": stat.samples,
              "stat_seq": stat.seq}
    if not connection.execute(_SET_SERVICE, values).rowcount:
        connection.execute(insert(ServiceStatRow).values(service=stat.service, median=stat.median,
                                                         samples=stat.samples, seq=stat.seq))


def _obj(tx: Tx, kind: str, key: str) -> Any:
    if kind == "job":
        return tx.peek_job(key)
    if kind == "worker":
        return tx.worker(key, create=False)
    return tx.machine(key, create=False)


def _serialise(session: Session, kind: str, obj: Any, now: float,
               conns: dict[str, list[ConnectorRow]]) -> dict[str, Any]:
    if kind == "job":
        return job_dict(obj)
    if kind == "worker":
        return worker_dict(obj, conns.get(obj.name, []), now)
    names = list(session.scalars(select(WorkerRow.name).where(WorkerRow.machine_id == obj.id)))
    return machine_dict(obj, names)


def changes_since(session: Session, since: int, limit: int = 1000,
                  with_tenant: bool = False) -> list[dict[str, Any]] | None:
    """Changes with seq > ``since`` in order; None when the log no longer holds them all
    (the client then needs a fresh snapshot). ``with_tenant``: each also with the ``tenant``
    of a job change (the websocket's fan-out sends it only to whom it belongs)."""
    counter = session.get(CounterRow, "seq")
    top = counter.value if counter else 0
    if since >= top:
        return [] if since == top else None
    first = session.scalar(select(func.min(ChangeRow.seq)))
    if first is None or first > since + 1:
        return None
    rows = session.scalars(select(ChangeRow).where(ChangeRow.seq > since).order_by(ChangeRow.seq).limit(limit))
    if with_tenant:
        return [{"seq": c.seq, "kind": c.kind, "id": c.key, "data": c.data, "tenant": c.tenant} for c in rows]
    return [{"seq": c.seq, "kind": c.kind, "id": c.key, "data": c.data} for c in rows]

