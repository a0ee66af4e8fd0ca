"""The change log: every change bumps one global sequence number.

At commit the writer gives every object an apply touched the next ``seq`` and appends its full
serialised form to ``changes``. A snapshot is read with its ``seq`` in one read transaction, so
"snapshot at N, then every change > N from the change log" has no gap and no duplicate, also
in a process that is not the writer.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from monitor.store.medians import ServiceMedians, changed_jobs
from monitor.store.models import ChangeRow, ConnectorRow, CounterRow, ServiceStatRow, WorkerRow
from monitor.store.serialise import job_dict, machine_dict, service_dict, worker_dict
from monitor.store.tx import Change, Tx


def new_service_stat(session: Session, service: str) -> ServiceStatRow:
    """A service's stats row, added to ``session`` (its median is filled at commit)."""
    stat = ServiceStatRow(service=service, median=None, samples=0, seq=0)
    session.add(stat)
    return stat


def record_changes(tx: Tx, *, lock_counter: bool, medians: ServiceMedians) -> list[Change]:
    """Give every object ``tx`` marked the next seq, and append its full serialised form (or
    null, deleted) to the change log; return what was recorded. ``lock_counter`` takes the
    counter row ``FOR UPDATE`` (PostgreSQL; SQLite's writer already holds the lock).
    ``medians``: the services' windows, moved by the jobs ``tx`` marked (given back with the
    new seq once ``tx`` commits, :attr:`Tx.after_commit`)."""
    session = tx.session
    if not tx.dirty and not tx.deleted:
        return []
    session.flush()
    counter = session.get(CounterRow, "seq", with_for_update=lock_counter)
    assert counter is not None
    seq = counter.value
    out: list[Change] = []
    tenants: dict[int, str | None] = {}  # a job change's tenant, by seq
    for (kind, key), tenant in list(tx.deleted.items()):
        seq += 1
        out.append((seq, kind, key, None))
        tenants[seq] = tenant
    # One query for the connectors of every changed worker, not one per worker.
    names = sorted(key for kind, key in tx.dirty if kind == "worker")
    conns: dict[str, list[ConnectorRow]] = {}
    for start in range(0, len(names), 500):
        for c in session.scalars(select(ConnectorRow).where(ConnectorRow.worker.in_(names[start:start + 500]))):
            conns.setdefault(c.worker, []).append(c)
    # Every object gets its seq first, then the plain jobs are written (a service's median
    # reads the jobs table), then each is serialised.
    numbered: list[tuple[int, str, str, Any]] = []
    for kind, key in list(tx.dirty):
        seq += 1
        obj = _obj(tx, kind, key)
        if obj is not None:
            obj.seq = seq
        numbered.append((seq, kind, key, obj))
    tx.write_plain_jobs(release=False)
    claim = medians.claim(session, counter.value)
    for job_id, gone in changed_jobs(tx.dirty, tx.deleted):
        medians.job_changed(claim, job_id, None if gone else tx.peek_job(job_id))
    for number, kind, key, obj in numbered:
        if obj is None:
            out.append((number, kind, key, None))
            continue
        if kind == "service":
            obj.median, obj.samples = medians.median(claim, session, obj.service)
            out.append((number, kind, key, service_dict(obj)))
            continue
        out.append((number, kind, key, _serialise(session, kind, obj, tx.now, conns)))
        if kind == "job":
            tenants[number] = obj.tenant
    counter.value = seq
    tx.after_commit.append(lambda: medians.release(claim, seq))
    if out:
        session.connection().execute(insert(ChangeRow), [{"seq": s, "kind": k, "key": key, "data": d, "tenant": tenants.get(s)}
                                            for s, k, key, d in out])
    return out


def _obj(tx: Tx, kind: str, key: str) -> Any:
    if kind == "service":
        return tx.session.get(ServiceStatRow, key) or new_service_stat(tx.session, key)
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

