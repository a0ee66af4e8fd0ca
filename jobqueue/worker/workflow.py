"""The worker side of workflows: run one step, and end the steps after it when it fails or
is cancelled (the client side, submitting and following a workflow, is
:mod:`jobqueue.client.workflows`; what a step is, :mod:`jobqueue.shared.steps`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import states as celery_states
from celery.exceptions import Ignore, Retry

from jobqueue.connectors import connector_class
from jobqueue.errors import JobCancelled
from jobqueue.shared import queued
from jobqueue.shared.names import RUN_JOB_TASK, TASK_REVOKED
from jobqueue.shared.steps import placeholder_paths, resolve_placeholders
from jobqueue.transport.internals import drop_chain, remaining_chain


def _later_steps(request: Any) -> list[dict[str, Any]]:
    """The chain's remaining steps as signature dicts, next step first."""
    return remaining_chain(request)


def stop_later_steps(task: Any, reason: str) -> None:
    """Mark every later step of the running step's workflow cancelled, and drop the chain.

    Celery would otherwise store the failed step's error on each later step; they never ran,
    so they end cancelled (``REVOKED`` with ``reason``) and the monitor hears ``task-revoked``
    -- also for a step a client cancelled already (it was never published, so no worker
    announced it).
    """
    request = task.request
    later = _later_steps(request)
    drop_chain(request)
    app = task.app
    ended = [str((sig.get("options") or {}).get("task_id")) for sig in later]
    queued.forget(app, sorted({str((sig.get("kwargs") or {}).get("service")) for sig in later}), ended)
    for sig in later:
        options = sig.get("options") or {}
        step_id = options.get("task_id")
        if not step_id:
            continue
        state = app.AsyncResult(step_id).state
        if state in celery_states.READY_STATES and state != celery_states.REVOKED:
            continue
        if state != celery_states.REVOKED:
            app.backend.store_result(step_id, JobCancelled(reason), celery_states.REVOKED)
        with app.events.default_dispatcher(hostname=request.hostname) as dispatcher:
            dispatcher.send(
                TASK_REVOKED, uuid=step_id, terminated=False, signum=None, expired=False,
                name=RUN_JOB_TASK, kwargs=options.get("kwargsrepr"), reason=reason,
            )


def run_step(
    task: Any,
    run: Callable[[Any, str, dict[str, Any], dict[str, Any]], dict[str, Any]],
    service: str,
    payload: dict[str, Any],
    options: dict[str, Any],
    previous: Any = None,
) -> dict[str, Any]:
    """Run one workflow step with ``run`` (``tasks.run_job``): fill in ``$prev`` placeholders
    from ``previous``, and end the later steps if this one fails or is cancelled."""
    workflow_id, step = options.get("workflow_id"), options.get("step")
    try:
        if placeholder_paths(payload) and task.app.AsyncResult(task.request.id).state != celery_states.REVOKED:
            payload = connector_class(service).validate(resolve_placeholders(payload, previous or {}))
        result = run(task, service, payload, options)
    except Retry:
        raise
    except Ignore:
        stop_later_steps(task, f"workflow {workflow_id} cancelled at step {step}")
        raise
    except BaseException:
        stop_later_steps(task, f"workflow {workflow_id} failed at step {step}")
        raise
    later = _later_steps(task.request)
    if later and _is_cancelled((later[0].get("options") or {}).get("task_id"), task.app):
        # The next step was cancelled on its own (JobHandle.cancel): never publish it, and
        # end the steps after it with it (their state is already stored by the client).
        stop_later_steps(task, f"workflow {workflow_id} cancelled at step {step + 1 if step else '?'}")
    return result


def _is_cancelled(job_id: str | None, app: Any) -> bool:
    return bool(job_id) and app.AsyncResult(job_id).state == celery_states.REVOKED
