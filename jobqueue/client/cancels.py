"""Cancelling the rest of a workflow: when one step is cancelled (by a client, or by a purge of
its queue), every later step that has not ended is recorded cancelled and revoked."""

from __future__ import annotations

import json
from typing import Any

from celery import states as celery_states

from jobqueue.connectors import CONNECTORS
from jobqueue.errors import JobCancelled
from jobqueue.shared import queued
from jobqueue.shared.records import workflow_key, workflow_step_key


def cancel_later_steps(job_id: str, app: Any) -> list[str]:
    """When ``job_id`` is a workflow step, mark every later step that has not ended cancelled
    (``REVOKED``, reason ``workflow <id> cancelled at step <k>``) and revoke them; return
    their ids (empty for a plain job).

    Called by :meth:`JobHandle.cancel`: cancelling any step ends the rest of its workflow, at
    once for callers; the worker that finishes the step before drops the chain there and
    announces the cancelled steps to the monitor (:func:`run_step`).
    """
    getter = getattr(app.backend, "get", None)
    if not callable(getter):
        return []
    workflow_id = getter(workflow_step_key(job_id))
    if not workflow_id:
        return []
    if isinstance(workflow_id, bytes):
        workflow_id = workflow_id.decode()
    raw = getter(workflow_key(workflow_id))
    if not raw:
        return []
    steps = list(json.loads(raw)["steps"])
    if job_id not in steps:
        return []
    number = steps.index(job_id) + 1
    reason = f"workflow {workflow_id} cancelled at step {number}"
    later = [step_id for step_id in steps[number:]
             if app.AsyncResult(step_id).state not in celery_states.READY_STATES]
    for step_id in later:
        app.backend.store_result(step_id, JobCancelled(reason), celery_states.REVOKED)
    if later:
        queued.forget(app, CONNECTORS, later)
        app.control.revoke(later)
    return later
