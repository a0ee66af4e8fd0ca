"""Merge one event into the store: the I/O around the merge rules.

``apply(event, tx)`` validates the whole event first (a malformed one raises
:class:`~jobqueue.errors.MalformedEvent` before anything is touched), loads what the event is
about, lets the pure rules decide (:mod:`monitor.merge.job_rules` for jobs,
:mod:`monitor.merge.worker_rules` for workers and connectors) and writes what they decided:
the job, worker or connector only moves forward, a duplicate changes nothing. Events made up
by truth repair go through the same function (they carry ``"source": "repair"``), so there is
one merge rule for everything.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from jobqueue.errors import MalformedEvent
from jobqueue.shared.names import (
    CONNECTOR_STATUS,
    JOB_WEBHOOK,
    TASK_FAILED,
    TASK_PROGRESS,
    TASK_RECEIVED,
    TASK_RETRIED,
    TASK_SUCCEEDED,
    WORKER_HEARTBEAT,
    WORKER_OFFLINE,
    WORKER_ONLINE,
)
from jobqueue.states import ConnectorStatus, JobStatus
from monitor.merge import truth
from monitor.merge.effects import NODE, left_worker, machine_of, move_row, set_worker, state_of, write_back
from monitor.merge.fields import (
    MAX_ID,
    clip_text,
    error_from,
    event_id,
    event_int,
    event_num,
    event_time,
    json_blob,
    malformed,
    progress_fields,
    received_time,
    result_from_repr,
)
from monitor.merge.job_rules import JOB_RULES, job_rule
from monitor.merge.worker_rules import (
    CONNECTOR_FIELDS,
    LIVENESS_FIELDS,
    ConnectorReport,
    ConnectorState,
    Identity,
    Liveness,
    connector_rule,
    identity_rule,
    is_late,
    liveness_rule,
)
from monitor.store import ConnectorRow, JobRow, Tx, WorkerRow
from monitor.store.statuses import ON_WORKER_STATUSES, MachineStatus, WorkerStatus

__all__ = ["apply", "expire", "machine_of", "mark_lost", "refresh_machine", "result_from_repr", "valid_progress"]

# -- jobs ----------------------------------------------------------------------------------


#: Checks of a job event's fields beyond its id and time, run before anything is touched.
_VALIDATORS: dict[str, Callable[[dict[str, Any]], Any]] = {
    TASK_RECEIVED: lambda ev: event_int(ev, "retries"),
    TASK_PROGRESS: lambda ev: (progress_fields(ev), event_int(ev, "attempt")),
    TASK_SUCCEEDED: lambda ev: event_num(ev, "runtime"),
    TASK_FAILED: lambda ev: (error_from(ev), event_num(ev, "runtime")),
    TASK_RETRIED: error_from,
}


def _job_event(ev: dict[str, Any], tx: Tx) -> bool:
    kind = ev["type"]
    uuid = event_id(ev, "uuid")
    assert uuid is not None
    ts = event_time(ev)
    hostname = event_id(ev, "hostname", required=False)
    validate = _VALIDATORS.get(kind)
    if validate is not None:
        validate(ev)  # before anything is touched
    job = tx.merge_job(uuid)
    created = job.status == ""
    old_worker = job.worker
    before = state_of(job)
    out = job_rule(before, ev, ts, hostname)
    write_back(job, before, out.state)
    if out.new_worker is not None:
        set_worker(tx, job, old_worker, out.new_worker, recount=out.recount)
    if out.claimed_by is not None:
        worker = tx.worker(out.claimed_by, create=False)
        if worker is not None and worker.current_job != job.id:
            worker.current_job = job.id
            tx.touch("worker", worker.name)
    if out.left_worker:
        left_worker(tx, job, failed=out.failed)
    changed = out.changed
    if created and not job.status:
        # An event that could not set any state (e.g. progress for a job we never saw
        # queued) still proves the job exists.
        job.status = JobStatus.QUEUED.value
        changed = True
    if changed or created:
        job.updated_at = tx.now
        fields = {k: v for k, v in ev.items() if k not in ("type", "uuid", "clock", "local_received", "utcoffset", "pid")}
        if out.progress_at_end is not None:
            fields["progress_at_end"] = out.progress_at_end
        tx.add_event(job, kind, ts, json_blob(fields))
        tx.touch("job", uuid)
        return True
    return False


def mark_lost(tx: Tx, worker: WorkerRow, since: float) -> list[str]:
    """Its worker went offline: its assigned/processing jobs are lost until redelivered."""
    lost = []
    for job in tx.jobs_of_worker(worker.name, ON_WORKER_STATUSES):
        if move_row(job, JobStatus.LOST, since):
            job.updated_at = tx.now
            tx.add_event(job, "lost", tx.now, {"worker": worker.name, "reason": "worker offline"})
            tx.touch("job", job.id)
            lost.append(job.id)
    if worker.current_job is not None:
        worker.current_job = None
        tx.touch("worker", worker.name)
    return lost


# -- workers, machines, connectors ---------------------------------------------------------


def identity_of(worker: WorkerRow) -> Identity:
    """The rules' view of a stored worker's identity."""
    return Identity(worker.machine_id, worker.gpu, worker.identity_source, worker.identity_warning)


def _identity(tx: Tx, worker: WorkerRow, machine_id: Any, gpu: Any, source: str) -> bool:
    """Record a worker's identity (:func:`identity_rule`); a worker that moved machine takes
    its jobs along, and its old machine is recomputed."""
    known = identity_of(worker)
    new = identity_rule(known, machine_id, gpu, source)
    if new == known:
        return False
    worker.machine_id, worker.gpu, worker.identity_source, worker.identity_warning = \
        new.machine_id, new.gpu, new.source, new.warning
    if known.machine_id != new.machine_id:
        if known.machine_id:
            refresh_machine(tx, known.machine_id)
        for job in tx.jobs_of_worker(worker.name, tuple(s.value for s in JobStatus)):
            if job.machine_id != worker.machine_id:
                job.machine_id = worker.machine_id
                tx.touch("job", job.id)
    return True


def refresh_machine(tx: Tx, machine_id: str | None) -> None:
    """Recompute a machine from its workers (online when any worker is)."""
    if not machine_id:
        return
    machine = tx.machine(machine_id)
    assert machine is not None
    workers = tx.workers_of_machine(machine_id)
    online = any(w.status == WorkerStatus.ONLINE.value for w in workers)
    machine.status = (MachineStatus.ONLINE if online else MachineStatus.OFFLINE).value
    machine.last_seen = max((w.heartbeat_at or 0.0 for w in workers), default=0.0) or None
    tx.touch("machine", machine_id)


def _machine_seen(tx: Tx, machine_id: str, seen: float | None) -> None:
    """A machine's ``last_seen`` follows its workers' heartbeats."""
    machine = tx.machine(machine_id, create=False)
    if machine is not None and seen is not None and (machine.last_seen is None or seen > machine.last_seen):
        machine.last_seen = seen
        tx.touch("machine", machine_id)


def _worker_report(ev: dict[str, Any]) -> dict[str, Any]:
    """The checked values a worker event reports (:data:`REPORTED`; None when absent)."""
    kind = ev["type"]
    sw_ver = ev.get("sw_ver")
    loadavg = ev.get("loadavg")
    if loadavg is not None and (not isinstance(loadavg, (list, tuple)) or len(loadavg) > 3 or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in loadavg)):
        raise malformed(kind, "bad loadavg")
    if sw_ver is not None and not isinstance(sw_ver, str):
        raise malformed(kind, "bad sw_ver")
    return {"freq": event_num(ev, "freq"), "active": event_int(ev, "active"),
            "processed": event_int(ev, "processed"), "pid": event_int(ev, "pid"),
            "sw_ver": sw_ver[:64] if sw_ver else None, "loadavg": list(loadavg) if loadavg is not None else None,
            "clock_skew": event_num(ev, "clock_skew")}


def _worker_event(ev: dict[str, Any], tx: Tx) -> bool:
    kind = ev["type"]
    name = event_id(ev, "hostname")
    assert name is not None
    ts = event_time(ev)
    received = received_time(ev, ts)
    report = _worker_report(ev)
    existing = tx.worker(name, create=False)
    if existing is not None and is_late(_liveness_of(existing), kind, ts):
        return False  # a late report from before the worker went offline
    worker = existing or tx.worker(name)
    assert worker is not None
    before = (worker.status, worker.machine_id)
    match = NODE.match(name)
    identity_changed = _identity(tx, worker, match.group(2) if match else None,
                                 int(match.group(1)) if match else None, "name")
    out = liveness_rule(_liveness_of(worker), kind, ts, received, report, created=existing is None)
    if out.lost_since is not None:
        mark_lost(tx, worker, out.lost_since)
    for attr in LIVENESS_FIELDS:
        if getattr(worker, attr) != getattr(out.state, attr):
            setattr(worker, attr, getattr(out.state, attr))
    changed = out.changed or identity_changed
    if changed:
        tx.touch("worker", name)
    if (worker.status, worker.machine_id) != before or existing is None:
        refresh_machine(tx, worker.machine_id)
    elif kind != WORKER_OFFLINE and worker.machine_id:
        _machine_seen(tx, worker.machine_id, worker.heartbeat_at)
    return changed


def _liveness_of(worker: WorkerRow) -> Liveness:
    return Liveness(**{attr: getattr(worker, attr) for attr in LIVENESS_FIELDS})


def _id_list(ev: dict[str, Any], key: str) -> list[str] | None:
    value = ev.get(key)
    if value is not None and (not isinstance(value, list) or len(value) > 1000
                              or not all(isinstance(x, str) and len(x) <= MAX_ID for x in value)):
        raise malformed(ev["type"], f"bad {key}")
    return value


def _connector_state(conn: ConnectorRow) -> ConnectorState:
    """The rule's view of a stored connector: loaded values straight from the instance dict
    (SQLAlchemy's attribute descriptors cost more than the rule), the others through them."""
    loaded = conn.__dict__
    return ConnectorState(**{k: loaded[k] if k in loaded else getattr(conn, k) for k in CONNECTOR_FIELDS})


def _connector_event(ev: dict[str, Any], tx: Tx) -> bool:
    name = event_id(ev, "worker", required=False) or event_id(ev, "hostname")
    assert name is not None
    service = event_id(ev, "service")
    assert service is not None
    ts = event_time(ev)
    received = received_time(ev, ts)
    try:
        status = ConnectorStatus(ev.get("status"))
    except ValueError:
        raise malformed(ev["type"], "bad status") from None
    seq, pid, interval = event_int(ev, "seq"), event_int(ev, "pid"), event_num(ev, "interval")
    details = ev.get("details")
    if details is not None and not isinstance(details, dict):
        raise malformed(ev["type"], "bad details")
    services, queues = _id_list(ev, "connectors"), _id_list(ev, "queues")
    worker = tx.worker(name, create=False)
    created = worker is None
    if worker is None:
        worker = tx.worker(name)
        assert worker is not None
        worker.heartbeat_at = ts
        worker.heartbeat_received = received
    before_machine = worker.machine_id
    changed = created
    changed |= _identity(tx, worker, ev.get("machine_id"), ev.get("gpu"), "worker")
    if services is not None and worker.services != services:
        worker.services = list(services)
        changed = True
    if queues is not None and worker.queues != queues:
        worker.queues = list(queues)
        changed = True
    conn = tx.connector(name, service, create=False)
    stored = None if conn is None else _connector_state(conn)
    report = ConnectorReport(status=status.value, message=clip_text(ev.get("message")),
                             details=json_blob(details or {}), ts=ts, received=received, seq=seq, pid=pid,
                             interval=interval, repair=ev.get("source") == "repair")
    state, conn_changed = connector_rule(stored, report)
    if state is not None:
        conn = conn or tx.connector(name, service)
        assert conn is not None
        # the stored values as read (the rule changed nothing in place), else the new row's
        held = stored.__dict__ if stored is not None else {k: getattr(conn, k) for k in CONNECTOR_FIELDS}
        for key, value in state.__dict__.items():
            if held[key] != value:
                setattr(conn, key, value)
    changed |= conn_changed
    if changed:
        tx.touch("worker", name)
    if created or before_machine != worker.machine_id:
        refresh_machine(tx, worker.machine_id)
    return changed


def apply(event: Any, tx: Tx) -> bool:
    """Merge ``event`` into the store through ``tx``; return whether anything changed.

    Raises :class:`MalformedEvent` (touching nothing) for an event we cannot use.
    """
    if not isinstance(event, dict):
        raise MalformedEvent(f"event is a {type(event).__name__}, not a dict")
    kind = event.get("type")
    if not isinstance(kind, str):
        raise MalformedEvent("event without a type")
    if truth.handles(event):
        return truth.apply_repair_event(event, tx)
    if kind in JOB_RULES:
        return _job_event(event, tx)
    if kind in (WORKER_ONLINE, WORKER_HEARTBEAT, WORKER_OFFLINE):
        return _worker_event(event, tx)
    if kind == CONNECTOR_STATUS:
        return _connector_event(event, tx)
    if kind == JOB_WEBHOOK:
        return False  # a webhook try changes no job: the totals count it (monitor.metrics.totals)
    raise MalformedEvent(f"unknown event type {kind[:80]!r}")


def expire(tx: Tx, *, default_freq: float, default_beat: float) -> None:
    """Time-based truth: a worker silent for 3 heartbeats is offline (its jobs lost); a
    connector status older than 2 beat intervals is stale."""
    now = tx.now
    online, offline = WorkerStatus.ONLINE.value, WorkerStatus.OFFLINE.value
    for worker in tx.session.scalars(select(WorkerRow).where(WorkerRow.status == online)):
        freq = worker.freq or default_freq
        if worker.heartbeat_received is not None and now - worker.heartbeat_received > 3 * freq:
            worker.status = offline
            tx.touch("worker", worker.name)
            mark_lost(tx, worker, worker.heartbeat_at or now)
            refresh_machine(tx, worker.machine_id)
    gone = set(tx.session.scalars(select(WorkerRow.name).where(WorkerRow.status == offline)))
    for job in tx.session.scalars(select(JobRow).where(JobRow.status.in_(ON_WORKER_STATUSES),
                                                       JobRow.worker.in_(gone))):
        owner = tx.worker(job.worker or "", create=False)
        if owner is not None:
            mark_lost(tx, owner, owner.heartbeat_at or now)
    for conn in tx.session.scalars(select(ConnectorRow).where(ConnectorRow.stale.is_(False))):
        beat = conn.interval or default_beat
        if conn.received_at is not None and now - conn.received_at > 2 * beat:
            conn.stale = True
            tx.touch("worker", conn.worker)


def _small_int(value: Any) -> bool:
    return value is None or (type(value) is int and -2**53 <= value <= 2**53)


def _finite(value: Any) -> bool:
    return value is None or (type(value) is float and math.isfinite(value)) or _small_int(value)


def _plainly_valid_progress(ev: dict[str, Any]) -> bool:
    """True for a progress report every field of which has its plain type and range (what
    the writer's coalescing meets thousands of times a second): a subset of the events
    :func:`valid_progress` accepts, decided without building the progress."""
    uuid, ts, percent, step = ev.get("uuid"), ev.get("timestamp"), ev.get("percent"), ev.get("step")
    message, node = ev.get("message"), ev.get("node")
    return (type(uuid) is str and 0 < len(uuid) <= MAX_ID and uuid.isprintable()
            and ts is not None and _finite(ts) and _finite(percent) and _finite(ev.get("eta_seconds"))
            and _small_int(step) and _small_int(ev.get("total_steps")) and _small_int(ev.get("preview"))
            and _small_int(ev.get("attempt")) and (percent is not None or step is not None)
            and (message is None or type(message) is str) and (node is None or type(node) in (str, int)))


def valid_progress(ev: dict[str, Any]) -> bool:
    """True when a ``task-progress`` event is well-formed (so coalescing it away loses no
    malformed-event count)."""
    if _plainly_valid_progress(ev):
        return True
    try:
        event_id(ev, "uuid")
        event_time(ev)
        progress_fields(ev)
        event_int(ev, "attempt")
    except (MalformedEvent, KeyError):
        return False
    return True
