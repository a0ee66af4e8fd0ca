"""Hand back a job this worker cannot run, before it starts and without using up a retry.

A job is routed on one of its requirements (:func:`jobqueue.requirements.route_queue`), so the
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
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.strategy import default as default_strategy

from jobqueue.requirements import Requirements, capabilities_from_details, unmet

log = logging.getLogger(__name__)

#: Seconds a worker leaves a queue alone after handing back one of its jobs.
HOLD_OFF = 5.0


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
    handler = default_strategy(task, app, consumer, **kwargs)

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
