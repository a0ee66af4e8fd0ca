"""Multi-step workflows: ``submit_workflow(steps)`` runs jobs one after the other.

    from jobqueue import submit_workflow
    flow = submit_workflow([
        ("comfyui", generate_payload),
        ("comfyui", {"image": {"$prev": "images.0.filename"}, ...}),
    ], priority=7)
    last_result = flow.wait()

A workflow is a Celery chain of ``jobqueue.run_job`` signatures with fixed task ids, so every
step's :class:`~jobqueue.client.jobs.JobHandle` exists before anything runs. The worker that
finishes a step publishes the next one (Celery's chain), at the upper broker level of the
workflow's priority (see :func:`jobqueue.shared.routing.broker_priority`): a workflow that has
started is finished before a later one starts at the same priority.

A step's payload may take values from the previous step's result: a placeholder
``{"$prev": "<path>"}`` anywhere in the payload is replaced by that value before the step is
validated and run (``path`` is dotted, list indices are numbers, ``""`` is the whole result).

A failing step fails the workflow with that step's error; the later steps never run and end
cancelled. Cancelling a workflow cancels its running and pending steps; cancelling any one step (its
``JobHandle.cancel``) cancels the steps after it. docs/workflows.md has the details.

This module is the client side; a worker runs steps with :mod:`jobqueue.worker.workflow`, and
what a step is (signature type, placeholders, record keys) is :mod:`jobqueue.shared.steps`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from celery import chain

from jobqueue.client.cancels import cancel_later_steps
from jobqueue.client.input_owners import check_input_owners
from jobqueue.client.jobs import JobHandle, default_app, prepare_job
from jobqueue.client.records import send_jobs
from jobqueue.errors import (
    JobFailed,
    SubmitError,
    WaitTimeout,
    WorkflowFailed,
    WorkflowNotFound,
)
from jobqueue.shared import queued
from jobqueue.shared.names import RUN_JOB_TASK, STEP_SIGNATURE_TYPE
from jobqueue.shared.records import workflow_key, workflow_step_key
from jobqueue.shared.steps import (
    PREV,
    StepSignature,
    placeholder_paths,
    resolve_placeholders,
)
from jobqueue.shared.submissions import submit_facts
from jobqueue.states import FINAL_JOB_STATES, JobStatus, workflow_status

__all__ = [
    "MAX_STEPS", "PREV", "STEP_SIGNATURE_TYPE", "StepSignature",
    "WorkflowHandle", "cancel_later_steps", "get_workflow", "placeholder_paths",
    "resolve_placeholders", "submit_workflow",
]

#: Most steps one workflow may have.
MAX_STEPS = 100



def _check_steps(steps: Any) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(steps, (str, bytes, dict)) or not isinstance(steps, Sequence):
        raise SubmitError("steps must be a list of (service, payload) pairs")
    if not 1 <= len(steps) <= MAX_STEPS:
        raise SubmitError(f"a workflow has 1..{MAX_STEPS} steps, got {len(steps)}")
    checked = []
    for number, item in enumerate(steps, 1):
        if not isinstance(item, (tuple, list)) or len(item) != 2 or not isinstance(item[0], str):
            raise SubmitError(f"step {number}: expected a (service, payload) pair, got {item!r}")
        checked.append((item[0], item[1]))
    return checked


def submit_workflow(
    steps: Sequence[tuple[str, dict[str, Any]]],
    *,
    priority: int | None = None,
    timeout: float | None = None,
    queue: str | None = None,
    app: Any = None,
    tenant: str | None = None,
) -> WorkflowHandle:
    """Validate every step, enqueue the first one and return the workflow's handle.

    Every step gets the workflow's ``priority`` (0..9, default 5), ``timeout`` (per step) and
    ``queue`` (default: each step's service queue) and ``tenant``. Raises :class:`SubmitError` (or its
    subclasses, naming the step) when any step is invalid, :class:`~jobqueue.errors.QueueFull`
    when its steps do not fit under their services' caps; nothing is enqueued then.
    """
    app = app or default_app()
    pairs = _check_steps(steps)
    workflow_id, submitted_at, signatures = str(uuid.uuid4()), time.time(), []
    for number, (service, payload) in enumerate(pairs, 1):
        try:
            if number == 1 and placeholder_paths(payload):
                raise SubmitError(f"{PREV} needs a previous step")
            kwargs, options = prepare_job(
                service, payload, is_redis=app.settings.is_redis, priority=priority, queue=queue,
                timeout=timeout, workflow_id=workflow_id, step=number, continuation=number > 1,
                extra={"workflow_steps": len(pairs), "workflow_submitted_at": submitted_at},
                secret_keys=app.settings.secret_keys_pattern, tenant=tenant, fair_share=app.settings.fair_share,
            )
            check_input_owners(app, service, kwargs["payload"], tenant)
        except SubmitError as exc:
            raise type(exc)(f"step {number}: {exc}") from None
        signatures.append(
            StepSignature(RUN_JOB_TASK, kwargs=kwargs, options=options, subtask_type=STEP_SIGNATURE_TYPE, app=app)
        )
    step_ids = [sig.options["task_id"] for sig in signatures]
    by_service: dict[str, list[str]] = {}
    for (service, _), step_id in zip(pairs, step_ids, strict=True):
        by_service.setdefault(service, []).append(step_id)
    queued.admit(app, by_service, tenant=tenant)  # every step or none: QueueFull, QuotaExceeded
    record = {"id": workflow_id, "steps": step_ids, "submitted_at": submitted_at,
              "priority": signatures[0].kwargs["options"]["priority"]}
    setter = getattr(app.backend, "set", None)
    if callable(setter):
        setter(workflow_key(workflow_id), json.dumps(record))
        for step_id in step_ids:
            setter(workflow_step_key(step_id), workflow_id)
    # ``ignore_result=False`` spelled out: a client app does not register the job task (a worker
    # does), and the first message of a chain of an unregistered task would leave that header
    # empty; the message stays the one a registered task sends (rolling upgrades compare them).
    # Every step's records first (later steps are sent by workers, queued now), in the first
    # step's round trip when they can.
    try:
        send_jobs(app, step_ids, _step_facts(app, signatures), [sig.options["queue"] for sig in signatures],
                  f"the records of workflow {workflow_id}", lambda: chain(*signatures).apply_async(ignore_result=False))
    except Exception:  # nothing sent: every step's place is free again
        queued.forget(app, list(by_service), step_ids)
        raise
    return WorkflowHandle(workflow_id, step_ids, app)


def _step_facts(app: Any, signatures: list[Any]) -> dict[str, dict[str, Any]]:
    """Each step's first facts: a later step is sent by the step before it, which Celery makes
    its parent, the first step its root."""
    ids = [sig.options["task_id"] for sig in signatures]
    return {ids[n]: submit_facts(app, RUN_JOB_TASK, sig.options, {
        "parent_id": ids[n - 1] if n else None, "root_id": ids[0] if n else None}) for n, sig in enumerate(signatures)}


def get_workflow(workflow_id: str, *, app: Any = None) -> WorkflowHandle:
    """The handle of a workflow submitted earlier (from its record in the result backend).

    Raises :class:`~jobqueue.errors.WorkflowNotFound` when no record exists (never
    submitted, or expired with the results).
    """
    app = app or default_app()
    getter = getattr(app.backend, "get", None)
    raw = getter(workflow_key(workflow_id)) if callable(getter) else None
    if not raw:
        raise WorkflowNotFound(f"no workflow {workflow_id}")
    record = json.loads(raw)
    return WorkflowHandle(record["id"], list(record["steps"]), app)


class WorkflowHandle:
    """A handle on one workflow: its id and its steps' :class:`JobHandle` s, in order."""

    def __init__(self, workflow_id: str, step_ids: Sequence[str], app: Any = None) -> None:
        self.id = workflow_id
        self.app = app or default_app()
        self.steps = [JobHandle(step_id, self.app) for step_id in step_ids]

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.id} ({len(self.steps)} steps)>"

    def statuses(self) -> list[JobStatus]:
        """Every step's status, in order."""
        return [step.status() for step in self.steps]

    def status(self) -> JobStatus:
        """The workflow's status: that of its first failed/timed-out/cancelled step if any;
        completed when every step is; processing once a step started; else queued."""
        return workflow_status(self.statuses())

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the last step ends; return its result.

        Raises :class:`~jobqueue.errors.WorkflowFailed` (a :class:`JobFailed`) naming the
        first step that failed, timed out or was cancelled, :class:`WaitTimeout` after
        ``timeout`` s.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        result: Any = None
        for number, step in enumerate(self.steps, 1):
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                result = step.wait(timeout=remaining)
            except WaitTimeout:
                raise WaitTimeout(f"workflow {self.id} still at step {number} after {timeout} s") from None
            except JobFailed as exc:
                raise WorkflowFailed(self.id, number, exc) from None
        return result

    def results(self) -> list[Any]:
        """Every step's result, in order, once the workflow completed (else raises like
        :meth:`wait` or :class:`~jobqueue.client.jobs.JobNotFinished`)."""
        values = []
        for number, step in enumerate(self.steps, 1):
            try:
                values.append(step.result())
            except JobFailed as exc:
                raise WorkflowFailed(self.id, number, exc) from None
        return values

    def cancel(self) -> bool:
        """Cancel the running and pending steps (last first, so none slips through).

        Returns False when the workflow had already ended.
        """
        if all(status in FINAL_JOB_STATES for status in self.statuses()):
            return False
        cancelled = [step.cancel() for step in reversed(self.steps)]
        return any(cancelled)
