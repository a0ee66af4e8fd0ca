"""Merge one event into the store: idempotent, by precedence.

``apply(event, tx)`` validates the whole event first (a malformed one raises
:class:`~jobqueue.errors.MalformedEvent` before anything is touched), then moves the job,
worker or connector only forward: a late ``task-started`` never moves a completed job back
(:func:`jobqueue.states.may_move`), a duplicate changes nothing, and progress never goes
backwards within one attempt. Events made up by truth repair go through the same function
(they carry ``"source": "repair"``), so there is one merge rule for everything.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Callable
from typing import Any

from jobqueue.errors import MalformedEvent
from jobqueue.events import CONNECTOR_STATUS, JOB_WEBHOOK, TASK_PROGRESS, job_meta_from_kwargs, parse_exception
from jobqueue.states import ConnectorStatus, JobStatus, empty_progress, may_move
from monitor import truth
from monitor.store import FAILED_STATUSES, Connector, Job, Tx, Worker

#: Longest id (job uuid, worker name, service) we accept.
MAX_ID = 255
#: Longest free text we keep (messages, error texts); longer is cut.
MAX_TEXT = 2000
#: Largest JSON blob (details, result, error details) we keep, in characters.
MAX_BLOB = 20000

_NODE = re.compile(r"^gpu(\d+)@(.+)$")
#: Final job statuses as stored strings.
FINAL = frozenset(s.value for s in JobStatus if s.is_final)


# -- field validation ----------------------------------------------------------------------


def _bad(event_type: str, msg: str) -> MalformedEvent:
    return MalformedEvent(f"{event_type}: {msg}")


def _id(ev: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = ev.get(key)
    if value is None or value == "":
        if required:
            raise _bad(ev["type"], f"missing {key}")
        return None
    if not isinstance(value, str) or len(value) > MAX_ID or not value.isprintable():
        raise _bad(ev["type"], f"bad {key}")
    return value


def _num(ev: dict[str, Any], key: str, *, required: bool = False) -> float | None:
    value = ev.get(key)
    if value is None:
        if required:
            raise _bad(ev["type"], f"missing {key}")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(ev["type"], f"bad {key}")
    return float(value)


def _int(ev: dict[str, Any], key: str, default: int | None = None) -> int | None:
    value = ev.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > 2**53:
        raise _bad(ev["type"], f"bad {key}")
    return value


def _text(value: Any) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"


def _blob(value: Any) -> Any:
    """A JSON-safe copy of ``value`` no bigger than :data:`MAX_BLOB` (else a note)."""
    try:
        encoded = json.dumps(value, default=str)
    except (TypeError, ValueError, RecursionError):
        return {"unserialisable": _text(repr(value))}
    if len(encoded) > MAX_BLOB:
        return {"truncated": True, "size": len(encoded), "preview": encoded[:MAX_TEXT]}
    return json.loads(encoded)


def _timestamp(ev: dict[str, Any]) -> float:
    ts = _num(ev, "timestamp")
    if ts is None:
        ts = _num(ev, "local_received")
    if ts is None:
        raise _bad(ev["type"], "missing timestamp")
    return ts


def _received(ev: dict[str, Any], ts: float) -> float:
    value = _num(ev, "local_received")
    return ts if value is None else value


# -- jobs ----------------------------------------------------------------------------------


def _status(job: Job) -> JobStatus | None:
    try:
        return JobStatus(job.status) if job.status else None
    except ValueError:
        return None


def _new_attempt(job: Job, ts: float) -> bool:
    return _status(job) in (JobStatus.RETRYING, JobStatus.LOST) and ts > (job.attempt_since or 0.0)


def _move(tx: Tx, job: Job, new: JobStatus, ts: float, *, new_attempt: bool = False) -> bool:
    current = _status(job)
    if current == new or not may_move(current, new, new_attempt=new_attempt):
        return False
    job.status = new.value
    if new in (JobStatus.RETRYING, JobStatus.LOST):
        job.attempt_since = ts
    if current in (JobStatus.RETRYING, JobStatus.LOST) and new in (JobStatus.ASSIGNED, JobStatus.PROCESSING):
        job.progress = empty_progress()
        job.started_at = None
        job.error = None
    return True


def _fill_meta(tx: Tx, job: Job, ev: dict[str, Any]) -> bool:
    """Fill job metadata from the kwargs JSON of task-sent/-received (never overwrite)."""
    meta = job_meta_from_kwargs(ev.get("kwargs"))
    if isinstance(meta.get("options"), dict):  # full kwargs (repair from inspect/backend)
        meta = {**meta["options"], **{k: v for k, v in meta.items() if k == "service"}}
    changed = False

    def fill(attr: str, value: Any, ok: Callable[[Any], bool]) -> None:
        nonlocal changed
        if getattr(job, attr) is None and value is not None and ok(value):
            setattr(job, attr, value)
            changed = True

    def short_str(v: Any) -> bool:
        return isinstance(v, str) and 0 < len(v) <= MAX_ID

    def small_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**31

    fill("name", ev.get("name"), short_str)
    fill("service", meta.get("service"), short_str)
    fill("queue", meta.get("queue") or ev.get("queue"), short_str)
    fill("priority", meta.get("priority"), small_int)
    fill("workflow_id", meta.get("workflow_id"), short_str)
    fill("step", meta.get("step"), small_int)
    submitted = meta.get("submitted_at")
    fill("submitted_at", submitted, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
    if job.meta is None and meta:
        job.meta = _blob(meta)
        changed = True
    return changed


def _set_worker(tx: Tx, job: Job, hostname: str | None, *, recount: bool = True) -> bool:
    """Record the job's worker. A job that already ended moves its count from the old worker
    to the new one (``recount``; off where the caller counts the end itself)."""
    if not hostname or job.worker == hostname:
        return False
    if recount:
        _count_end(tx, job, job.worker, -1)
        _count_end(tx, job, hostname, +1)
    job.worker = hostname
    job.machine_id = machine_of(tx, hostname)
    return True


def machine_of(tx: Tx, hostname: str) -> str | None:
    """The machine of worker ``hostname``: as the worker reported it, else from its node name."""
    worker = tx.worker(hostname, create=False)
    if worker is not None:
        return worker.machine_id
    node = _NODE.match(hostname)
    return node.group(2) if node else None


def _job_event(ev: dict[str, Any], tx: Tx) -> bool:
    kind = ev["type"]
    uuid = _id(ev, "uuid")
    assert uuid is not None
    ts = _timestamp(ev)
    hostname = _id(ev, "hostname", required=False)
    handler = _JOB_HANDLERS[kind]
    validate = _VALIDATORS.get(kind)
    if validate is not None:
        validate(ev)  # before anything is touched
    job = tx.job(uuid)
    assert job is not None
    created = job.status == ""
    changed = handler(ev, tx, job, ts, hostname)
    if created and not job.status:
        # An event that could not set any state (e.g. progress for a job we never saw
        # queued) still proves the job exists.
        job.status = JobStatus.QUEUED.value
        changed = True
    if changed or created:
        job.updated_at = tx.now
        fields = {k: v for k, v in ev.items() if k not in ("type", "uuid", "clock", "local_received", "utcoffset", "pid")}
        at_end = job.__dict__.pop("_progress_at_end", None)
        if at_end is not None:
            fields["progress_at_end"] = at_end
        tx.add_event(job, kind, ts, _blob(fields))
        tx.touch("job", uuid)
        return True
    return False


def _on_sent(ev: dict[str, Any], tx: Tx, job: Job, ts: float, hostname: str | None) -> bool:
    changed = _fill_meta(tx, job, ev)
    if job.submitted_at is None:
        job.submitted_at = ts
        changed = True
    if not job.status:
        job.status = JobStatus.QUEUED.value
        changed = True
    return changed


def _on_received(ev: dict[str, Any], tx: Tx, job: Job, ts: float, hostname: str | None) -> bool:
    retries = _int(ev, "retries", 0) or 0
    changed = _fill_meta(tx, job, ev)
    new_attempt = _new_attempt(job, ts) or retries > job.attempt
    moved = _move(tx, job, JobStatus.ASSIGNED, ts, new_attempt=new_attempt)
    if retries > job.attempt:
        job.attempt = retries
        changed = True
    if moved or job.received_at is None:
        job.received_at = ts
        changed = True
    if moved or job.worker is None:
        changed |= _set_worker(tx, job, hostname)
    return changed or moved


def _on_started(ev: dict[str, Any], tx: Tx, job: Job, ts: float, hostname: str | None) -> bool:
    changed = _fill_meta(tx, job, ev)
    moved = _move(tx, job, JobStatus.PROCESSING, ts, new_attempt=_new_attempt(job, ts))
    if moved or job.started_at is None:
        job.started_at = ts
        changed = True
    if moved or job.worker is None:
        changed |= _set_worker(tx, job, hostname)
    if moved and hostname:
        worker = tx.worker(hostname, create=False)
        if worker is not None and worker.current_job != job.id:
            worker.current_job = job.id
            tx.touch("worker", worker.name)
    return changed or moved


def _progress_fields(ev: dict[str, Any]) -> dict[str, Any]:
    percent = _num(ev, "percent")
    step = _int(ev, "step")
    total = _int(ev, "total_steps")
    eta = _num(ev, "eta_seconds")
    node = ev.get("node")
    if node is not None and not isinstance(node, (str, int)):
        raise _bad(ev["type"], "bad node")
    if percent is None and step is None:
        raise _bad(ev["type"], "no percent or step")
    if percent is None and step is not None and total:
        percent = 100.0 * step / total
    fields = {
        "percent": round(min(max(percent or 0.0, 0.0), 100.0), 2),
        "step": max(step or 0, 0),
        "total_steps": max(total or 0, 0),
        "message": _text(ev.get("message")),
        "node": None if node is None else _text(node)[:MAX_ID],
        "eta_seconds": None if eta is None or eta < 0 else eta,
    }
    preview = _int(ev, "preview")  # sequence number of the job's latest live preview
    if preview is not None and preview > 0:
        fields["preview"] = preview
    return fields


def _on_progress(ev: dict[str, Any], tx: Tx, job: Job, ts: float, hostname: str | None) -> bool:
    attempt = _int(ev, "attempt")
    progress = _progress_fields(ev)
    if _status(job) is not None and _status(job).is_final:  # type: ignore[union-attr]
        return False
    if attempt is not None and attempt < job.attempt:
        return False  # a report from an attempt that is over
    changed = False
    new_attempt = (attempt is not None and attempt > job.attempt) or _new_attempt(job, ts)
    if attempt is not None and attempt > job.attempt:
        job.attempt = attempt
        job.progress = empty_progress()
        changed = True
    moved = _move(tx, job, JobStatus.PROCESSING, ts, new_attempt=new_attempt)
    if _status(job) != JobStatus.PROCESSING:
        return changed or moved
    if moved and job.started_at is None:
        job.started_at = ts
    if job.worker is None:
        _set_worker(tx, job, hostname)
    if job.service is None and isinstance(ev.get("service"), str) and len(ev["service"]) <= MAX_ID:
        job.service = ev["service"]
    old = {**empty_progress(), **(job.progress or {})}
    forward = (progress["percent"], progress["step"]) > (old["percent"], old["step"])
    same_point = (progress["percent"], progress["step"]) == (old["percent"], old["step"])
    old.pop("reported_at", None)
    if forward or (same_point and progress != old and (progress["message"] != old["message"]
                                                       or progress.get("preview", 0) > old.get("preview", 0))):
        job.progress = {**progress, "reported_at": ts}  # when its eta_seconds was true
        changed = True
    return changed or moved


def _on_succeeded(ev: dict[str, Any], tx: Tx, job: Job, ts: float, hostname: str | None) -> bool:
    runtime = _num(ev, "runtime")
    result = ev.get("result")
    if isinstance(result, str):
        result = result_from_repr(result)
    moved = _move(tx, job, JobStatus.COMPLETED, ts)
    if not moved:
        return False
    job.finished_at = ts
    job.runtime = runtime
    job.result = _blob(result)
    job.error = None
    if job.worker is None:
        _set_worker(tx, job, hostname, recount=False)
    _job_ended(tx, job, failed=False)
    return True


#: Celery cuts a ``task-succeeded`` result repr at the task's ``resultrepr_maxsize``; a repr
#: this close to our tasks' limit (see :data:`jobqueue.tasks.RESULT_REPR_MAX`) may be cut.
REPR_SAFE = 19000


def _has_ellipsis(value: Any) -> bool:
    if value is Ellipsis:
        return True
    if isinstance(value, dict):
        return any(_has_ellipsis(k) or _has_ellipsis(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_has_ellipsis(v) for v in value)
    return False


def result_from_repr(text: str) -> Any:
    """The value of a ``task-succeeded`` result repr when it is whole; else an explicit
    ``{"truncated": True, ...}`` marker (the whole result comes from the result backend at
    the next repair). Celery's saferepr cuts long reprs and elides nesting below 3 levels
    (``{...}``, read back as Ellipsis): such a value is never shown as if it were the result."""
    if len(text) < REPR_SAFE:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            value = Ellipsis
        if not _has_ellipsis(value):
            return value
    return {"truncated": True, "size": len(text), "preview": None,
            "reason": "the event carried a shortened result; the result backend holds it whole"}


def _error_from(ev: dict[str, Any]) -> dict[str, Any]:
    error = ev.get("error")
    if ev.get("source") == "repair" and isinstance(error, dict):
        parsed = {"type": error.get("type"), "message": error.get("message"), "details": error.get("details")}
    else:
        exc = ev.get("exception")
        if exc is not None and not isinstance(exc, str):
            raise _bad(ev["type"], "bad exception")
        parsed = parse_exception(exc)
    etype = parsed.get("type")
    return {
        "type": etype[:MAX_ID] if isinstance(etype, str) else None,
        "message": _text(parsed.get("message")),
        "details": _blob(parsed.get("details") if isinstance(parsed.get("details"), dict) else {}),
    }


def _on_failed(ev: dict[str, Any], tx: Tx, job: Job, ts: float, hostname: str | None) -> bool:
    error = _error_from(ev)
    new = {"JobTimedOut": JobStatus.TIMED_OUT, "JobCancelled": JobStatus.CANCELLED}.get(error["type"] or "", JobStatus.FAILED)
    moved = _move(tx, job, new, ts)
    if not moved:
        return False
    job.finished_at = ts
    job.runtime = _num(ev, "runtime") or (ts - job.started_at if job.started_at else None)
    job.error = error
    if job.worker is None:
        _set_worker(tx, job, hostname, recount=False)
    _job_ended(tx, job, failed=True)
    return True


def _on_retried(ev: dict[str, Any], tx: Tx, job: Job, ts: float, hostname: str | None) -> bool:
    error = _error_from(ev)
    moved = _move(tx, job, JobStatus.RETRYING, ts)
    if not moved:
        return False
    job.attempt += 1
    job.error = error
    _job_ended(tx, job, failed=False)
    return True


def _on_revoked(ev: dict[str, Any], tx: Tx, job: Job, ts: float, hostname: str | None) -> bool:
    moved = _move(tx, job, JobStatus.CANCELLED, ts)
    if not moved:
        return False
    job.finished_at = ts
    reason = "expired" if ev.get("expired") is True else "cancelled"
    job.error = {"type": "JobCancelled", "message": reason, "details": {}}
    _job_ended(tx, job, failed=False)
    return True


def _on_rejected(ev: dict[str, Any], tx: Tx, job: Job, ts: float, hostname: str | None) -> bool:
    if ev.get("requeue") is True:
        return _move(tx, job, JobStatus.RETRYING, ts)
    moved = _move(tx, job, JobStatus.FAILED, ts)
    if moved:
        job.finished_at = ts
        job.error = {"type": "Rejected", "message": "rejected by the worker", "details": {}}
        _job_ended(tx, job, failed=True)
    return moved


def _final_progress(job: Job) -> None:
    """A finished job's progress is canonical (100 % when completed, empty otherwise), so a
    monitor that rebuilt the job from the result backend shows the same; the last reported
    progress stays in the timeline entry of the final event (``progress_at_end``)."""
    if job.progress and job.progress != empty_progress():
        job._progress_at_end = dict(job.progress)  # type: ignore[attr-defined]
    progress = empty_progress()
    if job.status == JobStatus.COMPLETED.value:
        progress.update(percent=100.0, eta_seconds=0.0)
    job.progress = progress


def _count_end(tx: Tx, job: Job, name: str | None, sign: int) -> None:
    """Add (``sign`` 1) or take back (-1) an ended job in its worker's ``ended``/``failed``
    counters. Called only where a job first reaches a final state (``_move`` refuses a
    replayed or repaired final event, so it cannot count twice) or where an ended job's
    worker changes; a worker not stored yet counts its jobs when it is created
    (:meth:`monitor.store.Tx.worker`), and pruning takes pruned jobs back out."""
    if not name or job.status not in FINAL:
        return
    worker = tx.worker(name, create=False)
    if worker is None:
        return
    worker.ended = max(0, (worker.ended or 0) + sign)
    if job.status in FAILED_STATUSES:
        worker.failed = max(0, (worker.failed or 0) + sign)
    tx.touch("worker", name)


def _job_ended(tx: Tx, job: Job, *, failed: bool) -> None:
    """A job left its worker (ended, or will be retried); one that ended counts on it."""
    if job.status in FINAL:
        _count_end(tx, job, job.worker, +1)
        _final_progress(job)
        if job.status == JobStatus.COMPLETED.value and job.service:
            tx.touch("service", job.service)  # its completion-time median may change
    if not job.worker:
        return
    worker = tx.worker(job.worker, create=False)
    if worker is None:
        return
    if worker.current_job == job.id:
        worker.current_job = None
        tx.touch("worker", worker.name)
    if job.status in FINAL or failed:
        tx.touch("worker", worker.name)  # its counts changed


_VALIDATORS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "task-received": lambda ev: _int(ev, "retries"),
    TASK_PROGRESS: lambda ev: (_progress_fields(ev), _int(ev, "attempt")),
    "task-succeeded": lambda ev: _num(ev, "runtime"),
    "task-failed": lambda ev: (_error_from(ev), _num(ev, "runtime")),
    "task-retried": _error_from,
}

_JOB_HANDLERS: dict[str, Callable[[dict[str, Any], Tx, Job, float, str | None], bool]] = {
    "task-sent": _on_sent,
    "task-received": _on_received,
    "task-started": _on_started,
    TASK_PROGRESS: _on_progress,
    "task-succeeded": _on_succeeded,
    "task-failed": _on_failed,
    "task-retried": _on_retried,
    "task-revoked": _on_revoked,
    "task-rejected": _on_rejected,
}


def mark_lost(tx: Tx, worker: Worker, since: float) -> list[str]:
    """Its worker went offline: its assigned/processing jobs are lost until redelivered."""
    lost = []
    for job in tx.jobs_of_worker(worker.name, ("assigned", "processing")):
        if _move(tx, job, JobStatus.LOST, since):
            job.updated_at = tx.now
            tx.add_event(job, "lost", tx.now, {"worker": worker.name, "reason": "worker offline"})
            tx.touch("job", job.id)
            lost.append(job.id)
    if worker.current_job is not None:
        worker.current_job = None
        tx.touch("worker", worker.name)
    return lost


# -- workers, machines, connectors ---------------------------------------------------------


def _identity(tx: Tx, worker: Worker, machine_id: Any, gpu: Any, source: str) -> bool:
    """Record a worker's identity. A known machine id is never replaced (the earlier system
    replaced it with "unknown" and lost the worker); a disagreement becomes a warning."""
    changed = False
    old_machine = worker.machine_id
    if isinstance(machine_id, str) and machine_id and machine_id != "unknown" and len(machine_id) <= MAX_ID:
        if worker.machine_id is None or (worker.identity_source == "name" and source == "worker"):
            worker.machine_id = machine_id
            worker.identity_source = source
            changed = True
        elif worker.machine_id != machine_id:
            warning = f"reported machine_id {machine_id!r} differs from {worker.machine_id!r}"
            if worker.identity_warning != warning:
                worker.identity_warning = warning
                changed = True
    if isinstance(gpu, int) and not isinstance(gpu, bool) and 0 <= gpu < 1024 and worker.gpu != gpu:
        if worker.gpu is None or source == "worker":
            worker.gpu = gpu
            changed = True
    if worker.machine_id is None and worker.identity_warning is None:
        worker.identity_warning = "missing machine_id"
        changed = True
    elif worker.machine_id is not None and worker.identity_warning == "missing machine_id":
        worker.identity_warning = None
        changed = True
    if changed and old_machine != worker.machine_id:
        if old_machine:
            refresh_machine(tx, old_machine)
        for job in tx.jobs_of_worker(worker.name, tuple(s.value for s in JobStatus)):
            if job.machine_id != worker.machine_id:
                job.machine_id = worker.machine_id
                tx.touch("job", job.id)
    return changed


def refresh_machine(tx: Tx, machine_id: str | None) -> None:
    """Recompute a machine from its workers (online when any worker is)."""
    if not machine_id:
        return
    machine = tx.machine(machine_id)
    assert machine is not None
    workers = tx.workers_of_machine(machine_id)
    status = "online" if any(w.status == "online" for w in workers) else "offline"
    seen = max((w.heartbeat_at or 0.0 for w in workers), default=0.0) or None
    machine.status = status
    machine.last_seen = seen
    tx.touch("machine", machine_id)


def _worker_event(ev: dict[str, Any], tx: Tx) -> bool:
    kind = ev["type"]
    name = _id(ev, "hostname")
    assert name is not None
    ts = _timestamp(ev)
    received = _received(ev, ts)
    freq = _num(ev, "freq")
    active = _int(ev, "active")
    processed = _int(ev, "processed")
    pid = _int(ev, "pid")
    sw_ver = ev.get("sw_ver")
    loadavg = ev.get("loadavg")
    if loadavg is not None and (not isinstance(loadavg, (list, tuple)) or len(loadavg) > 3 or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in loadavg)):
        raise _bad(kind, "bad loadavg")
    if sw_ver is not None and not isinstance(sw_ver, str):
        raise _bad(kind, "bad sw_ver")
    existing = tx.worker(name, create=False)
    if existing is not None and existing.status == "offline" and kind != "worker-offline" \
            and existing.heartbeat_at is not None and ts <= existing.heartbeat_at:
        return False  # a late report from before the worker went offline
    worker = existing or tx.worker(name)
    assert worker is not None
    before = (worker.status, worker.machine_id)
    changed = existing is None
    match = _NODE.match(name)
    changed |= _identity(tx, worker, match.group(2) if match else None, int(match.group(1)) if match else None, "name")
    if kind == "worker-offline":
        if worker.status != "offline":
            worker.status = "offline"
            changed = True
            mark_lost(tx, worker, worker.heartbeat_at or ts)
        worker.heartbeat_at = max(worker.heartbeat_at or ts, ts)
    else:
        if worker.status != "online":
            worker.status = "online"
            worker.draining = False
            changed = True
        if kind == "worker-online" and worker.online_at != ts:
            worker.online_at = ts
            changed = True
        worker.heartbeat_at = max(worker.heartbeat_at or ts, ts)
        worker.heartbeat_received = max(worker.heartbeat_received or received, received)
        changed = True
    for attr, value in (("freq", freq), ("active", active), ("processed", processed), ("pid", pid),
                        ("sw_ver", sw_ver[:64] if sw_ver else None),
                        ("loadavg", list(loadavg) if loadavg is not None else None)):
        if value is not None and getattr(worker, attr) != value:
            setattr(worker, attr, value)
            changed = True
    if changed:
        tx.touch("worker", name)
    if (worker.status, worker.machine_id) != before or existing is None:
        refresh_machine(tx, worker.machine_id)
    elif kind != "worker-offline" and worker.machine_id:
        _machine_seen(tx, worker.machine_id, worker.heartbeat_at)
    return changed


def _machine_seen(tx: Tx, machine_id: str, seen: float | None) -> None:
    """A machine's ``last_seen`` follows its workers' heartbeats."""
    machine = tx.machine(machine_id, create=False)
    if machine is not None and seen is not None and (machine.last_seen is None or seen > machine.last_seen):
        machine.last_seen = seen
        tx.touch("machine", machine_id)


def _connector_is_newer(conn: Connector | None, seq: int | None, ts: float, received: float, *,
                        repair: bool) -> tuple[bool, bool]:
    """Whether a connector status (from an event or from a repair's ``connector_status``
    answer) replaces the stored one, and whether it confirms it (same report again).

    The worker numbers every report with ``seq``, increasing across its restarts (it starts at
    the process's start time in ms), and the control command answers with the seq of the last
    report it sent, so seq alone orders events and repair answers: an older repair answer never
    overwrites a newer event, and a late event never overwrites a newer repair answer. Without a
    seq on either side (an older worker) the event time decides, and a repair answer wins
    unless an event arrived after it was asked for.
    """
    if conn is None:
        return True, False
    if seq is not None and conn.event_seq is not None:
        return seq > conn.event_seq, seq == conn.event_seq
    if repair:
        return conn.received_at is None or received >= conn.received_at, False
    return conn.updated_at is None or ts >= conn.updated_at, False


def _connector_event(ev: dict[str, Any], tx: Tx) -> bool:
    name = _id(ev, "worker", required=False) or _id(ev, "hostname")
    assert name is not None
    service = _id(ev, "service")
    assert service is not None
    ts = _timestamp(ev)
    received = _received(ev, ts)
    try:
        status = ConnectorStatus(ev.get("status"))
    except ValueError:
        raise _bad(ev["type"], "bad status") from None
    seq = _int(ev, "seq")
    pid = _int(ev, "pid")
    interval = _num(ev, "interval")
    details = ev.get("details")
    if details is not None and not isinstance(details, dict):
        raise _bad(ev["type"], "bad details")
    services = ev.get("connectors")
    queues = ev.get("queues")
    for value, what in ((services, "connectors"), (queues, "queues")):
        if value is not None and (not isinstance(value, list) or len(value) > 1000
                                  or not all(isinstance(x, str) and len(x) <= MAX_ID for x in value)):
            raise _bad(ev["type"], f"bad {what}")
    machine_id = ev.get("machine_id")
    gpu = ev.get("gpu")
    worker = tx.worker(name, create=False)
    created = worker is None
    if worker is None:
        worker = tx.worker(name)
        assert worker is not None
        worker.heartbeat_at = ts
        worker.heartbeat_received = received
    before_machine = worker.machine_id
    changed = created
    changed |= _identity(tx, worker, machine_id, gpu, "worker")
    if services is not None and worker.services != services:
        worker.services = list(services)
        changed = True
    if queues is not None and worker.queues != queues:
        worker.queues = list(queues)
        changed = True
    conn = tx.connector(name, service, create=False)
    newer, confirms = _connector_is_newer(conn, seq, ts, received, repair=ev.get("source") == "repair")
    if confirms and conn is not None:
        # The worker still reports the status we hold (same seq): it is fresh again.
        conn.received_at = max(conn.received_at or received, received)
        if conn.stale:
            conn.stale = False
            changed = True
    if newer:
        if conn is None:
            conn = tx.connector(name, service)
            assert conn is not None
            changed = True
        new_values = {"status": status.value, "message": _text(ev.get("message")),
                      "details": _blob(details or {}), "stale": False}
        if any(getattr(conn, k) != v for k, v in new_values.items()):
            changed = True
        for k, v in new_values.items():
            setattr(conn, k, v)
        conn.updated_at = ts
        conn.received_at = received
        conn.event_seq = seq if seq is not None else conn.event_seq
        conn.pid = pid if pid is not None else conn.pid
        if interval is not None and interval > 0:
            conn.interval = interval
        changed = True
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
    if kind in _JOB_HANDLERS:
        return _job_event(event, tx)
    if kind in ("worker-online", "worker-heartbeat", "worker-offline"):
        return _worker_event(event, tx)
    if kind == CONNECTOR_STATUS:
        return _connector_event(event, tx)
    if kind == JOB_WEBHOOK:
        return False  # a webhook try changes no job: the totals count it (monitor.totals)
    raise MalformedEvent(f"unknown event type {kind[:80]!r}")


def expire(tx: Tx, *, default_freq: float, default_beat: float) -> None:
    """Time-based truth: a worker silent for 3 heartbeats is offline (its jobs lost); a
    connector status older than 2 beat intervals is stale."""
    from sqlalchemy import select

    from monitor.store import Connector

    now = tx.now
    for worker in tx.session.scalars(select(Worker).where(Worker.status == "online")):
        freq = worker.freq or default_freq
        if worker.heartbeat_received is not None and now - worker.heartbeat_received > 3 * freq:
            worker.status = "offline"
            tx.touch("worker", worker.name)
            mark_lost(tx, worker, worker.heartbeat_at or now)
            refresh_machine(tx, worker.machine_id)
    offline = set(tx.session.scalars(select(Worker.name).where(Worker.status == "offline")))
    for job in tx.session.scalars(select(Job).where(Job.status.in_(("assigned", "processing")), Job.worker.in_(offline))):
        owner = tx.worker(job.worker or "", create=False)
        if owner is not None:
            mark_lost(tx, owner, owner.heartbeat_at or now)
    for conn in tx.session.scalars(select(Connector).where(Connector.stale.is_(False))):
        beat = conn.interval or default_beat
        if conn.received_at is not None and now - conn.received_at > 2 * beat:
            conn.stale = True
            tx.touch("worker", conn.worker)


def valid_progress(ev: dict[str, Any]) -> bool:
    """True when a ``task-progress`` event is well-formed (so coalescing it away loses no
    malformed-event count)."""
    try:
        _id(ev, "uuid")
        _timestamp(ev)
        _progress_fields(ev)
        _int(ev, "attempt")
    except (MalformedEvent, KeyError):
        return False
    return True
