"""A job that takes its service down is handed back once, and is poison on the second machine.

A connector tells a service that exited or restarted under the job
(:class:`~jobqueue.errors.ServerCrashed`: ComfyUI's socket closed and its connections refused,
or it came back without the prompt; the WebUI's connection cut mid-request) from one that
merely stalls, at once. The job is handed back like any service lost mid-job (a counted retry,
at once; the worker steps aside until its service is healthy again), but the machine is noted
in the job's record (:func:`jobqueue.shared.records.crashes_key`): a job that has taken down the
servers of :data:`POISON_MACHINES` different machines fails with "crashed the server on 2
machines" (:class:`~jobqueue.errors.CrashesServers`) and is not retried further, so one bad
workflow cannot take down one GPU after another.
"""

from __future__ import annotations

import logging
from typing import Any

from jobqueue.errors import CrashesServers, ServerCrashed
from jobqueue.shared.records import crashes_key, result_client

log = logging.getLogger(__name__)

#: Distinct machines whose service a job may take down before it is poison.
POISON_MACHINES = 2


def poisoned_by_crash(app: Any, job_id: str, machine_id: str, error: BaseException) -> CrashesServers | None:
    """After ``error`` ended an attempt on ``machine_id``: for a crash, note the machine and
    return the error the job fails with once it took down :data:`POISON_MACHINES` machines'
    servers; None otherwise (or without a Redis result backend)."""
    if not isinstance(error, ServerCrashed):
        return None
    client = result_client(app)
    if client is None:
        return None
    key = crashes_key(job_id)
    try:
        with client.pipeline(transaction=True) as pipe:
            pipe.sadd(key, machine_id)
            pipe.expire(key, int(app.conf.result_expires or 86400))
            pipe.smembers(key)
            _, _, raw = pipe.execute()
    except Exception:  # the job is handed back as any crash; only the count is lost
        log.warning("job %s: could not note the crash on %s", job_id, machine_id, exc_info=True)
        return None
    machines = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in raw)
    if len(machines) < POISON_MACHINES:
        return None
    return CrashesServers(
        f"crashed the server on {len(machines)} machines ({', '.join(machines)}): not retried further "
        f"(last: {error.message})", {"machines": machines, "last": error.to_dict()})
