"""Batches: the same job ``count`` times, each copy varied (e.g. a different seed).

    from jobqueue import submit_batch
    jobs = submit_batch("simulation", {"steps": 4, "seed": 100}, 8, vary={"seed": "increment"})

``vary`` says how copy ``i`` (0-based) differs from ``payload``:

* a dict ``{field: rule}`` with rule ``"increment"`` (the field's value plus ``i``; a missing
  field counts from 0), ``"random"`` (a random integer 0..2**32-1), or a list of ``count``
  values (copy ``i`` takes the ``i``-th). A dotted field reaches into nested objects: a ComfyUI
  graph keeps its seed in a node's inputs, ``{"workflow.3.inputs.seed": "increment"}``;
* a callable ``vary(i, payload) -> payload`` returning copy ``i``'s payload.

Every copy is validated before the first is enqueued; the jobs share a ``batch_id`` in their
metadata (with ``batch_index`` and ``batch_size``) so the monitor can show them together.
"""

from __future__ import annotations

import copy
import secrets
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from jobqueue.client.input_owners import check_input_owners
from jobqueue.client.jobs import JobHandle, default_app, prepare_job
from jobqueue.client.records import send_jobs
from jobqueue.errors import SubmitError
from jobqueue.shared import queued
from jobqueue.shared.names import RUN_JOB_TASK
from jobqueue.shared.submissions import submit_facts

#: Most jobs one batch may hold.
MAX_BATCH_SIZE = 10_000
#: Upper bound (exclusive) of the ``"random"`` rule.
RANDOM_LIMIT = 2**32

Vary = Mapping[str, Any] | Callable[[int, dict[str, Any]], dict[str, Any]] | None


def _apply_rule(field: str, rule: Any, base: Any, index: int, count: int) -> Any:
    if rule == "increment":
        start = 0 if base is None else base
        if isinstance(start, bool) or not isinstance(start, int):
            raise SubmitError(f"vary {field!r}: 'increment' needs an integer value, got {base!r}")
        return start + index
    if rule == "random":
        return secrets.randbelow(RANDOM_LIMIT)
    if isinstance(rule, (list, tuple)):
        if len(rule) != count:
            raise SubmitError(f"vary {field!r}: {len(rule)} values for {count} jobs")
        return rule[index]
    raise SubmitError(f"vary {field!r}: rule must be 'increment', 'random' or a list, got {rule!r}")


def vary_payload(payload: dict[str, Any], index: int, count: int, vary: Vary) -> dict[str, Any]:
    """The payload of copy ``index`` of ``count`` (see the module docstring for ``vary``)."""
    if vary is None:
        return copy.deepcopy(payload)
    if callable(vary):
        varied = vary(index, copy.deepcopy(payload))
        if not isinstance(varied, dict):
            raise SubmitError(f"vary({index}, payload) must return a dict, got {type(varied).__name__}")
        return varied
    if not isinstance(vary, Mapping):
        raise SubmitError("vary must be a dict of field rules or a callable(i, payload)")
    varied = copy.deepcopy(payload)
    for field, rule in vary.items():
        parent, key = _parent_of(varied, field)
        parent[key] = _apply_rule(field, rule, parent.get(key), index, count)
    return varied


def _parent_of(payload: dict[str, Any], field: str) -> tuple[dict[str, Any], str]:
    """The object that holds dotted ``field`` in ``payload`` (the whole path must exist but
    the last key), and that last key."""
    *path, key = field.split(".")
    parent = payload
    for depth, part in enumerate(path):
        child = parent.get(part)
        if not isinstance(child, dict):
            where = ".".join(path[: depth + 1])
            raise SubmitError(f"vary {field!r}: the payload has no object at {where!r}")
        parent = child
    return parent, key


def submit_batch(
    service: str,
    payload: dict[str, Any],
    count: int,
    *,
    vary: Vary = None,
    priority: int | None = None,
    queue: str | None = None,
    timeout: float | None = None,
    app: Any = None,
    tenant: str | None = None,
) -> list[JobHandle]:
    """Validate ``count`` varied copies of a job, enqueue them all, return their handles in order.

    Raises :class:`~jobqueue.errors.SubmitError` (naming the copy) when any copy is invalid,
    :class:`~jobqueue.errors.QueueFull` when the batch does not fit under its service's cap
    whole; nothing is enqueued then. ``priority``, ``queue``, ``timeout`` and ``tenant`` are as
    for :func:`~jobqueue.client.jobs.submit_job`.
    """
    app = app or default_app()
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_BATCH_SIZE:
        raise SubmitError(f"count must be an integer 1..{MAX_BATCH_SIZE}, got {count!r}")
    if not isinstance(payload, dict):
        raise SubmitError(f"payload must be an object, got {type(payload).__name__}")
    batch_id = str(uuid.uuid4())
    messages = []
    for index in range(count):
        try:
            messages.append(prepare_job(
                service, vary_payload(payload, index, count, vary), is_redis=app.settings.is_redis,
                priority=priority, queue=queue, timeout=timeout,
                extra={"batch_id": batch_id, "batch_index": index, "batch_size": count},
                secret_keys=app.settings.secret_keys_pattern, tenant=tenant, fair_share=app.settings.fair_share,
            ))
            check_input_owners(app, service, messages[-1][0]["payload"], tenant)
        except SubmitError as exc:
            raise type(exc)(f"batch job {index}: {exc}") from None
    ids = [send_options["task_id"] for _, send_options in messages]
    queued.admit(app, {service: ids}, tenant=tenant)  # all or none: QueueFull, QuotaExceeded
    facts = {o["task_id"]: submit_facts(app, RUN_JOB_TASK, o) for _, o in messages}

    def send(index: int) -> Any:
        kwargs, send_options = messages[index]
        return app.send_task(RUN_JOB_TASK, kwargs=kwargs, **send_options)

    for sent in range(count):
        try:
            if sent:
                send(sent)
            else:  # every job's records first (in the first message's round trip when they can)
                send_jobs(app, ids, facts, [o["queue"] for _, o in messages],
                          f"the submit records of {len(ids)} batch jobs", lambda: send(0))
        except Exception:  # the jobs not sent free their places
            queued.forget(app, [service], ids[sent:])
            raise
    handles = [JobHandle(send_options["task_id"], app) for _, send_options in messages]
    for handle in handles:
        handle.submitted = True
    return handles
