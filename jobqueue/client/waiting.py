"""Why a queued job is not running: its requirements against the online workers, from a client.

The monitor answers the same question from its store (``waiting_for`` in ``GET /api/jobs/<id>``);
a client without a monitor asks here. At submit, a job with requirements records them next to
its result (:func:`remember`, one Redis key that expires with the results); later
:func:`job_waiting_for` asks every online worker for its capabilities (the ``connector_status``
command) and lets :func:`jobqueue.shared.requirements.waiting_for` say what nobody has;
:func:`job_expected_load` says from the same answers how long loading its checkpoint will add
(none when a worker has it loaded: warm routing).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from jobqueue.shared.names import CONTROL_CONNECTOR_STATUS
from jobqueue.shared.records import requires_key, result_client
from jobqueue.shared.requirements import (
    Capabilities,
    Requirements,
    satisfies,
    waiting_for,
    worker_capabilities,
)
from jobqueue.shared.warm import checkpoint_of, expected_load, load_seconds_from_details, loaded_from_details

log = logging.getLogger(__name__)

#: Seconds a client waits for workers' answers.
INSPECT_TIMEOUT = 1.0


def queue_remember(pipe: Any, app: Any, job_id: str, service: str, req: Requirements) -> None:
    """Add :func:`remember`'s write to ``pipe`` (a pipeline on the result backend's Redis)."""
    if not req.is_empty:
        pipe.set(requires_key(job_id), json.dumps({"service": service, "requires": req.as_dict()}),
                 ex=int(app.conf.result_expires or 86400))


def remember(app: Any, job_id: str, service: str, req: Requirements) -> None:
    """Record a job's requirements for :func:`job_waiting_for` (no-op without a Redis backend)."""
    client = result_client(app)
    if client is None or req.is_empty:
        return
    try:
        with client.pipeline(transaction=False) as pipe:
            queue_remember(pipe, app, job_id, service, req)
            pipe.execute()
    except Exception:  # the job is sent anyway; only the client-side reason is lost
        log.warning("could not record the requirements of job %s", job_id, exc_info=True)


def recorded(app: Any, job_id: str) -> tuple[str | None, Requirements]:
    """``(service, requirements)`` recorded at submit (empty when none)."""
    client = result_client(app)
    if client is None:
        return None, Requirements()
    try:
        raw = client.get(requires_key(job_id))
        data = json.loads(raw) if raw else {}
    except Exception:
        log.warning("could not read the requirements of job %s", job_id, exc_info=True)
        return None, Requirements()
    service = data.get("service") if isinstance(data, dict) else None
    return (service if isinstance(service, str) else None), Requirements.from_dict(data.get("requires") if isinstance(data, dict) else None)


def _connector_snapshots(app: Any, timeout: float) -> list[tuple[str, dict[str, Any]]]:
    """``(worker, {service: {"status", "details"}})`` of every worker answering ``connector_status``."""
    replies = app.control.broadcast(CONTROL_CONNECTOR_STATUS, reply=True, timeout=timeout) or []
    out: list[tuple[str, dict[str, Any]]] = []
    for reply in replies:
        for name, snapshot in (reply or {}).items():
            if isinstance(snapshot, dict) and isinstance(snapshot.get("connectors"), dict):
                out.append((snapshot.get("worker") or name, snapshot["connectors"]))
    return out


def online_capabilities(app: Any, timeout: float = INSPECT_TIMEOUT) -> list[Capabilities]:
    """Capabilities of every worker that answers ``connector_status`` within ``timeout``."""
    return [cap for worker, connectors in _connector_snapshots(app, timeout)
            for cap in worker_capabilities(worker, connectors)]


def job_expected_load(app: Any, job_id: str, timeout: float = INSPECT_TIMEOUT) -> float:
    """Seconds of checkpoint loading queued ``job_id`` should expect before it runs: 0 when an
    online worker that can run it has its checkpoint loaded (warm routing gives it the job
    first), or it names none, or nothing was measured; else the smallest load those workers
    measured (:func:`jobqueue.shared.warm.expected_load`)."""
    service, req = recorded(app, job_id)
    model = checkpoint_of(req)
    if model is None:
        return 0.0
    found: list[tuple[tuple[str, ...], float | None]] = []
    for worker, connectors in _connector_snapshots(app, timeout):
        for cap in worker_capabilities(worker, connectors):
            if (service is None or cap.service == service) and satisfies(req, cap):
                details = connectors[cap.service].get("details")
                found.append((loaded_from_details(details), load_seconds_from_details(details)))
    return expected_load(model, found)


def job_waiting_for(app: Any, job_id: str, timeout: float = INSPECT_TIMEOUT) -> str | None:
    """Why no online worker can run ``job_id`` (None when one can, or it needs nothing)."""
    service, req = recorded(app, job_id)
    if req.is_empty:
        return None
    return waiting_for(service, req, online_capabilities(app, timeout))
