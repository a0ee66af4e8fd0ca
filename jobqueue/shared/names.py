"""Event names, task names and the fields our custom events carry: the contract between
workers, clients and the monitor (every module spells them through this one).

Celery's standard events (``task-sent``, ``task-received``, ``task-started``,
``task-succeeded``, ``task-failed``, ``task-retried``, ``task-revoked``, ``task-rejected``,
``worker-online``, ``worker-heartbeat``, ``worker-offline``) keep their Celery meaning. On top
of them jobqueue sends:

``task-progress``
    ``uuid``, ``service``, ``percent`` (0-100, never decreasing within one attempt),
    ``step``, ``total_steps``, ``message``, ``node``, ``eta_seconds``, ``attempt``.
``connector-status``
    ``worker`` (node name), ``machine_id``, ``gpu``, ``service``, ``status``
    (:class:`~jobqueue.states.ConnectorStatus`), ``message``, ``seq`` (per worker, increasing),
    ``details`` (service facts: version, device, VRAM...), ``connectors`` (all services of the
    worker), ``queues``, ``beat`` (True when re-sent on the steady beat, False on a change),
    ``interval`` (the beat interval, so a consumer can tell a stale status), ``since`` (wall
    time the connector entered ``status``). ``seq`` starts at the worker process's start time
    in ms, so it keeps increasing across restarts. While ``status`` is not idle/active the
    worker does not consume the service's queue. The ``connector_status`` control command
    answers ``{worker, machine_id, gpu, connectors: {service: {status, message, details, seq,
    since}}, queues, seq, interval, running}`` with the statuses and seqs last sent.

Job metadata (service, priority, workflow, step...) travels in the ``kwargs`` field of
``task-sent``/``task-received`` as a JSON object (we set Celery's ``kwargsrepr``), see
:func:`job_meta_from_kwargs`.

The Dispatcher adds ``hostname``, ``timestamp``, ``clock``, ``pid`` and ``utcoffset``.
"""

from __future__ import annotations

import json
from typing import Any

from jobqueue.errors import error_info

#: Custom task event: real progress of a running job.
TASK_PROGRESS = "task-progress"
#: Custom event: one connector's status on one worker.
CONNECTOR_STATUS = "connector-status"
#: Custom event: one try of a job's webhook (``outcome``: one of :data:`WEBHOOK_OUTCOMES`).
JOB_WEBHOOK = "job-webhook"
#: What a webhook try came to: delivered, failed with a retry to come, or failed for good.
WEBHOOK_OUTCOMES = ("delivered", "retrying", "given_up")

# Celery's standard events, under the names every sender and reader here uses.
TASK_SENT = "task-sent"
TASK_RECEIVED = "task-received"
TASK_STARTED = "task-started"
TASK_SUCCEEDED = "task-succeeded"
TASK_FAILED = "task-failed"
TASK_RETRIED = "task-retried"
TASK_REVOKED = "task-revoked"
TASK_REJECTED = "task-rejected"
WORKER_ONLINE = "worker-online"
WORKER_HEARTBEAT = "worker-heartbeat"
WORKER_OFFLINE = "worker-offline"

#: Task events the monitor consumes (Celery's and ours).
TASK_EVENTS = (
    TASK_SENT,
    TASK_RECEIVED,
    TASK_STARTED,
    TASK_SUCCEEDED,
    TASK_FAILED,
    TASK_RETRIED,
    TASK_REVOKED,
    TASK_REJECTED,
    TASK_PROGRESS,
)
#: Standard Celery worker events the monitor consumes.
WORKER_EVENTS = (WORKER_ONLINE, WORKER_HEARTBEAT, WORKER_OFFLINE)

#: Remote control command that returns a worker's identity and connector statuses.
CONTROL_CONNECTOR_STATUS = "connector_status"
#: Remote control command that cancels a running job on the worker that runs it.
CONTROL_CANCEL_JOB = "cancel_job"

#: Name of the one Celery task that runs every job.
RUN_JOB_TASK = "jobqueue.run_job"
#: Name of the Celery task that makes one try of a job's webhook (:mod:`jobqueue.worker.webhooks`).
WEBHOOK_TASK = "jobqueue.deliver_webhook"
#: Canvas type name of a workflow step (:class:`jobqueue.shared.steps.StepSignature`): a worker
#: rebuilding a chain finds the step class under it (it must import that module).
STEP_SIGNATURE_TYPE = "jobqueue.step"

#: Split a ``task-failed`` event's ``exception`` repr into type, message and details (the one
#: error reader, :func:`jobqueue.errors.error_info`, under the name the monitor knows).
parse_exception = error_info


def job_meta_from_kwargs(kwargs: Any) -> dict[str, Any]:
    """Return the job metadata carried in a task event's ``kwargs`` field ({} if none)."""
    if isinstance(kwargs, dict):
        return kwargs
    if not isinstance(kwargs, str) or not kwargs.startswith("{"):
        return {}
    try:
        value = json.loads(kwargs)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}

#: The worker class ``celery -A jobqueue worker`` builds: it installs the worker's concerns
#: (:mod:`jobqueue.worker.concerns`) into the app. Named, not imported: a client process never
#: loads worker code.
WORKER_CLASS = "jobqueue.worker.node:Worker"
