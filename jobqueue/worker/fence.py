"""RabbitMQ: a redelivered job whose first attempt still runs on a live worker waits for it.

When the RabbitMQ node holding a worker's connection dies, the broker gives that worker's
unacknowledged job to another worker at once, while the first one -- alive, reconnected to a
surviving node -- may still be running it (its ack will fail). On Redis the lease keeps the
message from being handed out while its worker lives (:mod:`jobqueue.worker.lease`); RabbitMQ
has nothing like it. So a copy that starts while the job's facts name an unfinished attempt
on another worker asks that worker (``inspect active``) whether it still runs the job, and
waits while it does (up to ``job_timeout``). Then the start goes on as usual: a job that
succeeded meanwhile is dropped (:func:`jobqueue.worker.attempts.begin_attempt`); one whose
worker died or gave it up runs here.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from jobqueue.shared import job_record as facts

log = logging.getLogger(__name__)

#: Seconds between two questions to the worker of the first attempt (each waits up to 1 s).
POLL = 0.5
#: Seconds the worker of the first attempt may stay silent (reconnecting) before it counts as gone.
SILENCE = 8.0


def running_elsewhere(task: Any, known: dict[str, Any]) -> str | None:
    """The worker of the job's unfinished earlier attempt (``known``: its facts as they were
    before this start), when that is another worker on RabbitMQ; else None."""
    app, request = task.app, task.request
    if app.settings.is_redis:
        return None
    other = known.get("worker")
    if not other or other == request.hostname or known.get("started_at") is None:
        return None
    if known.get("finished_at") is not None or known.get("retried_at") is not None:
        return None
    return str(other)


def still_running(app: Any, worker: str, job_id: str) -> bool | None:
    """True when ``worker`` lists ``job_id`` among its active jobs, False when it answers
    without it, None when it does not answer (reconnecting, or gone)."""
    try:
        replies = app.control.inspect(destination=[worker], timeout=1.0).active() or {}
    except Exception:  # the broker is switching too
        return None
    active = replies.get(worker)
    if active is None:
        return None
    return any(isinstance(r, dict) and r.get("id") == job_id for r in active)


def wait_for_first_attempt(task: Any, client: Any, known: dict[str, Any]) -> dict[str, Any] | None:
    """Wait while another live worker still runs this job; return the job's facts as they
    are after that wait (None when there was nothing to wait for). A worker silent for
    :data:`SILENCE` s in a row counts as gone (a dead worker's job then starts that much later)."""
    other = running_elsewhere(task, known)
    if other is None:
        return None
    job_id = task.request.id
    deadline = time.monotonic() + task.app.settings.job_timeout
    silent_since: float | None = None
    waited = False
    while time.monotonic() < deadline:
        answer = still_running(task.app, other, job_id)
        if answer is False:
            break
        now = time.monotonic()
        if answer is None:
            silent_since = silent_since or now
            if now - silent_since >= SILENCE:
                break
        else:
            silent_since = None
            if not waited:
                log.warning("job %s: redelivered while %s still runs it; waiting for that attempt to end",
                            job_id, other)
            waited = True
        time.sleep(POLL)
    return facts.read_many(client, [job_id]).get(job_id, {}) if waited else None
