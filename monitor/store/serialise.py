"""The JSON shapes of stored objects: what the API, the snapshot and the change log carry.

Pure functions of rows (and, for a worker's heartbeat age, of the reader's clock); the shapes
are the monitor's public contract, so a change here is an API change.
"""

from __future__ import annotations

from typing import Any

from jobqueue.shared.requirements import capability_summary
from jobqueue.states import JobStatus, empty_progress
from monitor.store.models import ConnectorRow, MachineRow, ServiceStatRow, WorkerRow
from monitor.store.plain_jobs import AnyJob
from monitor.store.statuses import WorkerStatus


def connector_dict(c: ConnectorRow) -> dict[str, Any]:
    """A connector status as a worker's ``connectors`` entry shows it."""
    return {
        "status": c.status,
        "message": c.message,
        "details": c.details or {},
        "updated_at": c.updated_at,
        "seq": c.event_seq,
        "interval": c.interval,
        "stale": bool(c.stale),
    }


def heartbeat_age(received: float | None, now: float) -> float | None:
    """Seconds since the monitor received the worker's last heartbeat, as of ``now`` (the
    reader's clock: the one field of a worker never cached, see :mod:`monitor.store.worker_cache`)."""
    return None if received is None else round(max(0.0, now - received), 3)


def worker_dict(w: WorkerRow, connectors: list[ConnectorRow], now: float) -> dict[str, Any]:
    """A worker as the API shows it; ``processed``/``failed`` count the jobs the store holds
    that ended on it (see :func:`monitor.merge.effects.count_end`)."""
    status = w.status
    if status == WorkerStatus.ONLINE.value and w.draining:
        status = WorkerStatus.DRAINING.value
    return {
        "name": w.name,
        "machine_id": w.machine_id,
        "gpu": w.gpu,
        "status": status,
        "identity_complete": bool(w.machine_id) and w.gpu is not None and not w.identity_warning,
        "identity_warning": w.identity_warning,
        "connectors": {c.service: connector_dict(c) for c in sorted(connectors, key=lambda c: c.service)},
        "capabilities": capability_summary({c.service: {"details": c.details} for c in connectors}),
        "services": list(w.services or []),
        "queues": list(w.queues or []),
        "active": w.active,
        "processed": w.ended or 0,
        "failed": w.failed or 0,
        "celery_processed": w.processed,
        "current_job": w.current_job,
        "heartbeat_at": w.heartbeat_at,
        "heartbeat_age": heartbeat_age(w.heartbeat_received, now),
        "freq": w.freq,
        "online_at": w.online_at,
        "sw_ver": w.sw_ver,
        "loadavg": w.loadavg,
        "pid": w.pid,
        "clock_skew": w.clock_skew,
        "seq": w.seq,
    }


def machine_dict(m: MachineRow, workers: list[str]) -> dict[str, Any]:
    """A machine as the API shows it, with the names of its workers."""
    return machine_fields(m.id, m.status, m.last_seen, m.seq, workers)


def machine_fields(machine_id: str, status: str, last_seen: float | None, seq: int,
                   workers: list[str]) -> dict[str, Any]:
    """:func:`machine_dict` from the columns themselves (a snapshot reads them as plain rows:
    an ORM object per machine cost more than the rest of the machines' read)."""
    return {"id": machine_id, "workers": sorted(workers), "status": status, "last_seen": last_seen, "seq": seq}


def _meta_int(meta: dict[str, Any], key: str) -> int | None:
    value = meta.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _meta_str(meta: dict[str, Any], key: str) -> str | None:
    value = meta.get(key)
    return value[:255] if isinstance(value, str) and value else None


def job_dict(j: AnyJob) -> dict[str, Any]:
    """A job as the API and the websocket show it.

    Nothing here depends on the clock of the reader, so a snapshot and the deltas carry the
    same values: a processing job's ``eta_seconds`` is the one its worker computed from the
    observed rate with its last progress report, taken at ``eta_at``.
    """
    progress = empty_progress()
    progress.update(j.progress or {})
    reported_at = progress.pop("reported_at", None)
    meta = j.meta or {}
    processing = j.status == JobStatus.PROCESSING.value
    return {
        "id": j.id,
        "name": j.name,
        "service": j.service,
        "status": j.status,
        "worker": j.worker,
        "machine_id": j.machine_id,
        "queue": j.queue,
        "priority": j.priority,
        "workflow_id": j.workflow_id,
        "step": j.step,
        "tenant": j.tenant,
        "workflow_steps": _meta_int(meta, "workflow_steps"),
        "batch_id": _meta_str(meta, "batch_id"),
        "batch_index": _meta_int(meta, "batch_index"),
        "batch_size": _meta_int(meta, "batch_size"),
        "attempt": j.attempt,
        "retries": j.attempt,
        "progress": progress,
        "submitted_at": j.submitted_at,
        "received_at": j.received_at,
        "started_at": j.started_at,
        "finished_at": j.finished_at,
        "runtime": j.runtime,
        "eta_seconds": progress["eta_seconds"] if processing else None,
        "eta_at": reported_at if processing and progress["eta_seconds"] is not None else None,
        "queue_position": None,
        "error": j.error,
        "result": j.result,
        "payload_summary": _meta_str(meta, "payload_summary"),
        "requires": meta.get("requires") if isinstance(meta.get("requires"), dict) else None,
        **task_fields(j),
        "seq": j.seq,
    }


def task_fields(j: AnyJob) -> dict[str, Any]:
    """What the events said of the Celery task (None: not seen; never a guess): args and kwargs
    (tasks that are no jobqueue job), parent, root and group ids, ETA (``scheduled``: it has one
    and has not started -- Celery hands an ETA task to a worker at once, which holds it), expiry,
    routing key and exchange."""
    task = j.task or {}
    return {
        "args": task.get("args"), "kwargs": task.get("kwargs"),
        "parent_id": j.parent_id, "root_id": j.root_id, "group_id": task.get("group_id"),
        "eta": task.get("eta"), "expires": task.get("expires"),
        "scheduled": j.started_at is None and task.get("eta") is not None
        and j.status in (JobStatus.QUEUED.value, JobStatus.ASSIGNED.value),
        "routing_key": task.get("routing_key"), "exchange": task.get("exchange"),
    }


def service_dict(s: ServiceStatRow) -> dict[str, Any]:
    """A service's completion-time median as the API shows it."""
    return {"service": s.service, "median": s.median, "samples": s.samples, "seq": s.seq}
