"""Hand back a job this worker cannot run, before it starts and without using up a retry.

A job is routed on one of its requirements (:func:`jobqueue.shared.requirements.route_queue`), so the
worker that receives it may lack another one, or may have lost a model since it subscribed.
:func:`requirements_strategy` is the job task's Celery *strategy* (the function the consumer
calls for every message of the task, before ``task-received``): it reads the job's
``requires`` from the message and checks them against this worker's current capabilities.

* Satisfied (or no requirements): Celery's default strategy takes over, as for any task.
* Not satisfied: the message is rejected with ``requeue=True`` (back in its queue with its
  retry count untouched; no ``task-received``/``task-started`` event, no result-backend
  state, so the job is still simply queued) and the worker stops consuming that queue for
  :data:`HOLD_OFF` seconds (:meth:`~jobqueue.worker.capabilities.CapabilityGate.hold_off`), so
  a worker that can run it gets it.

Capabilities are as of the last health check. A model deleted since is found by the service
itself (ComfyUI refuses the prompt with ``value_not_in_list`` before running anything, or, for
a V3 loader, fails it with ``FileNotFoundError`` when the loader runs: the connector lists the
file under ``missing_models``):
:func:`hand_back_if_models_vanished` then refreshes the capabilities and sends the job back to
its queue without counting a retry: the retry's error is
:class:`~jobqueue.errors.ModelsVanished`, so the job reads ``queued`` (with its ``waiting_for``)
until a worker that has the model takes it.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import Retry

from jobqueue.errors import ModelsVanished
from jobqueue.shared import queued
from jobqueue.shared.requirements import Requirements, capabilities_from_details, unmet
from jobqueue.transport.internals import default_task_strategy
from jobqueue.worker.event_times import stamping_consumer

log = logging.getLogger(__name__)

#: Seconds a worker leaves a queue alone after handing back one of its jobs.
HOLD_OFF = 5.0
#: Longest a task waits for the consumer to drop a vanished model's queue before handing back.
STEP_ASIDE_WAIT = 2.0


def message_requirements(message: Any) -> tuple[str | None, Requirements]:
    """``(service, requirements)`` of a ``run_job`` message (empty when it has none)."""
    try:
        payload = message.payload
        kwargs = payload[1] if isinstance(payload, (list, tuple)) and len(payload) > 1 else {}
    except Exception:  # undecodable: Celery's own strategy reports it
        return None, Requirements()
    if not isinstance(kwargs, dict):
        return None, Requirements()
    options = kwargs.get("options")
    service = kwargs.get("service")
    requires = options.get("requires") if isinstance(options, dict) else None
    return (service if isinstance(service, str) else None), Requirements.from_dict(requires)


def lacking(app: Any, message: Any) -> list[str]:
    """What this worker lacks to run the job in ``message`` (empty: it may run it)."""
    service, req = message_requirements(message)
    runtime = getattr(app, "runtime", None)
    if req.is_empty or service is None or runtime is None:
        return []
    connector = runtime.connectors.get(service)
    if connector is None:
        return []  # a worker without the service: the task reports that itself
    cap = capabilities_from_details(runtime.identity.node_name, service, connector.details)
    return unmet(req, cap)


def requirements_strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
    """Celery's default strategy behind a requirements check (see the module doc)."""
    # (its events leave stamped with the times the job's record takes: jobqueue.worker.event_times)
    handler = default_task_strategy()(task, app, stamping_consumer(app, consumer), **kwargs)

    def task_message_handler(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> Any:
        missing = lacking(app, message)
        if not missing:
            return handler(message, body, ack, reject, callbacks, **kw)
        queue = (message.delivery_info or {}).get("routing_key")
        job_id = (message.headers or {}).get("id")
        log.warning("job %s needs %s, which this worker lacks: handing it back to %s",
                    job_id, ", ".join(missing), queue)
        message.reject_log_error(log, consumer.connection_errors, requeue=True)
        gate = getattr(getattr(app, "runtime", None), "capability_gate", None)
        if gate is not None and queue:
            gate.hold_off(queue, HOLD_OFF)
        return None

    return task_message_handler


def vanished_models(error: BaseException, required: tuple[str, ...]) -> list[str]:
    """The required models the service refused as absent according to ``error``'s details:
    ComfyUI's ``value_not_in_list`` on a loader input, or (``missing_models``) a loader that
    failed to find its file when it ran (a V3 loader checks only then)."""
    details = getattr(error, "details", None)
    node_errors = details.get("node_errors") if isinstance(details, dict) else None
    missing = details.get("missing_models") if isinstance(details, dict) else None
    gone: list[str] = [m for m in missing if m in required] if isinstance(missing, list) else []
    for info in node_errors.values() if isinstance(node_errors, dict) else ():
        for err in info.get("errors") or () if isinstance(info, dict) else ():
            extra = err.get("extra_info") if isinstance(err, dict) else None
            value = extra.get("received_value") if isinstance(extra, dict) else None
            if err.get("type") == "value_not_in_list" and value in required and value not in gone:
                gone.append(value)
    return gone


def hand_back_if_models_vanished(task: Any, runtime: Any, options: dict[str, Any], error: BaseException) -> None:
    """After a job started: when its service refused it because a model it needs is gone (deleted
    since the last health check), refresh this worker's capabilities (so it stops taking that
    model's jobs) and send the job back to its queue with its retry count unchanged, by raising
    Celery's ``Retry``. Returns (does nothing) for any other error."""
    req = Requirements.from_dict(options.get("requires"))
    gone = vanished_models(error, req.models)
    if not gone:
        return
    request = task.request
    log.warning("job %s: %s no longer on this worker; handing it back", request.id, ", ".join(gone))
    runtime.check_health()
    gate = getattr(runtime, "capability_gate", None)
    if gate is not None and not gate.request_sync().wait(STEP_ASIDE_WAIT):
        log.warning("consumer did not drop the queues of %s within %s s", ", ".join(gone), STEP_ASIDE_WAIT)
    again = task.signature_from_request(request, None, None, countdown=0, retries=request.retries or 0)
    queued.back_in_queue(task, (request.kwargs or {}).get("service"))
    again.apply_async()
    message = f"{', '.join(gone)} no longer on {runtime.identity.node_name}: handed back"
    raise Retry(message, exc=ModelsVanished(message, {"models": gone}), when=0, sig=again)
