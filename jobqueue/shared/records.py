"""Every Redis key jobqueue writes, one function per key (as rq's ``Job.key_for``), and the one
way to reach the result backend's Redis.

Old and new workers share one broker and one result backend during a rolling upgrade, so
these formats never change (``tests/jobqueue/shared/test_records.py`` pins each one byte for byte).

Two Redis databases hold them, and kombu's ``global_keyprefix`` rule differs between them:

* **The result backend** (``JOBQUEUE_RESULT_BACKEND``) holds Celery's result records and
  jobqueue's records beside them (every ``*_key`` function here but
  :func:`dead_letter_key`). Celery's ``result_backend_transport_options["global_keyprefix"]``
  prefixes only Celery's own keys, so jobqueue's records never carry a prefix; all of them
  are reached through :func:`result_client` (or the backend's ``get``/``set``, which add
  nothing).
* **The broker** (``JOBQUEUE_BROKER_URL``, when it is Redis) holds kombu's queue lists, its
  unacked hash and index, and the dead-letter lists (:func:`dead_letter_key`). The broker's
  ``global_keyprefix`` goes in front of every broker key, always the same way: a kombu
  channel's client adds it itself, so a key written through one is built without it; a
  Redis client of our own adds :func:`jobqueue.transport.internals.global_keyprefix`.

The keys kombu and Celery name themselves are private knowledge of those libraries, computed
(and checked against them) in :mod:`jobqueue.transport.internals`: ``result_key`` and
``result_key_prefix`` (Celery's result records, which the workers also write in one round
trip), ``unacked_key`` and ``unacked_index_key`` (the lease renews the index),
``redis_queue_keys`` (a queue's priority lists).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DEAD_SUFFIX", "attempts_key", "backend_client", "crashes_key", "dead_letter_key", "facts_key",
    "moved_up_info_key", "moved_up_key", "orphan_book_key", "preview_key", "queued_key",
    "replication_fence_key", "requires_key", "result_client", "retry_key", "submitted_key",
    "tenant_queued_key", "tenant_queues_key", "tenant_running_key", "warm_key", "webhook_attempts_key",
    "webhook_delivered_key", "workflow_key", "workflow_step_key",
]


def result_client(app: Any) -> Any:
    """The result backend's Redis client, or None when the backend is not Redis (it then
    has no pipelines, and jobqueue's records are not written)."""
    return backend_client(getattr(app, "backend", None))


def backend_client(backend: Any) -> Any:
    """``backend``'s Redis client (a result backend), or None when it is not Redis."""
    client = getattr(backend, "client", None)
    return client if client is not None and hasattr(client, "pipeline") else None


# -- the result backend ----------------------------------------------------------------------
def facts_key(job_id: str) -> str:
    """Hash of a job's facts (times, attempt, worker, ...: :mod:`jobqueue.shared.job_record`)."""
    return f"jobqueue-facts-{job_id}"


def submitted_key(job_id: str) -> str:
    """Set before a job's message is sent: the job was submitted
    (:mod:`jobqueue.shared.submissions`)."""
    return f"jobqueue-submitted-{job_id}"


def requires_key(job_id: str) -> str:
    """A job's service and requirements as submitted (:mod:`jobqueue.client.waiting`)."""
    return f"jobqueue-requires-{job_id}"


def attempts_key(job_id: str) -> str:
    """Counter of a job's started attempts (:mod:`jobqueue.worker.task`)."""
    return f"jobqueue-attempts-{job_id}"


def retry_key(job_id: str) -> str:
    """Hash of a job's retry bookkeeping: first start, uncounted retries
    (:mod:`jobqueue.worker.retrying`)."""
    return f"jobqueue-retry-{job_id}"


def crashes_key(job_id: str) -> str:
    """Set of the machines whose service a job took down (:mod:`jobqueue.worker.crashes`)."""
    return f"jobqueue-crashes-{job_id}"


def moved_up_key() -> str:
    """Sorted set of jobs moved up to a larger card after running out of memory, scored by the
    time they fail if no such card takes them (:mod:`jobqueue.worker.moveup`)."""
    return "jobqueue-moved-up"


def moved_up_info_key() -> str:
    """Hash: job id -> JSON of why it was moved up (service, VRAM tried, requirement, worker)."""
    return "jobqueue-moved-up-info"


def preview_key(job_id: str) -> str:
    """Hash of a job's latest preview: data, mime, seq, at (:mod:`jobqueue.shared.previews`)."""
    return f"jobqueue-preview-{job_id}"


def webhook_attempts_key(job_id: str) -> str:
    """List of a job's webhook tries (JSON), oldest first (:mod:`jobqueue.worker.webhooks`)."""
    return f"jobqueue-webhook-attempts-{job_id}"


def webhook_delivered_key(delivery_id: str) -> str:
    """Set once a webhook delivery got a 2xx: later copies of its message send nothing."""
    return f"jobqueue-webhook-delivered-{delivery_id}"


def workflow_key(workflow_id: str) -> str:
    """A workflow's record: step ids, priority, submit time (:mod:`jobqueue.client.workflows`)."""
    return f"jobqueue-workflow-{workflow_id}"


def workflow_step_key(job_id: str) -> str:
    """A workflow step's job id -> its workflow id (for ``JobHandle.cancel`` on one step)."""
    return f"jobqueue-workflow-step-{job_id}"


def queued_key(service: str) -> str:
    """Sorted set of ``service``'s queued jobs (member a job id, score when it entered the
    queue): the count queue caps apply to (:mod:`jobqueue.shared.queued`)."""
    return f"jobqueue-queued-{service}"


def tenant_queued_key(tenant: str) -> str:
    """Sorted set of ``tenant``'s queued jobs, as :func:`queued_key` per service: the count its
    quota of queued jobs applies to (:mod:`jobqueue.shared.queued`)."""
    return f"jobqueue-tenant-queued-{tenant}"


def tenant_running_key(tenant: str) -> str:
    """Sorted set of ``tenant``'s running jobs (member a job id, score when its worker last said
    it holds it): the count its quota of running jobs applies to (:mod:`jobqueue.shared.running`)."""
    return f"jobqueue-tenant-running-{tenant}"


def tenant_queues_key() -> str:
    """Sorted set of the tenant queues jobs were sent to (member ``<tenant>/<queue>``, score the
    last submit): what workers consume besides their own queues (:mod:`jobqueue.shared.fairshare`)."""
    return "jobqueue-tenant-queues"


def warm_key(service: str) -> str:
    """Hash of what ``service``'s workers have loaded: worker -> ``{"loaded", "idle", "at"}``
    (JSON; :mod:`jobqueue.worker.warm`, warm routing)."""
    return f"jobqueue-warm-{service}"


def orphan_book_key(worker: str, service: str) -> str:
    """Hash of the prompts ``worker``'s ``service`` connector left behind
    (:mod:`jobqueue.connectors.orphans`)."""
    return f"jobqueue-orphans-{worker}-{service}"


def replication_fence_key() -> str:
    """A key every writer sets just before a Redis ``WAIT`` that must cover writes made on
    another connection (:mod:`jobqueue.transport.replication`): its value means nothing."""
    return "jobqueue-replication-fence"


# -- the broker --------------------------------------------------------------------------------
#: Suffix of a queue's dead-letter list: ``simulation`` -> ``simulation.dead``.
DEAD_SUFFIX = ".dead"


def dead_letter_key(queue: str, *, prefix: str = "") -> str:
    """The broker's Redis list that keeps ``queue``'s poison messages (:mod:`jobqueue.worker.poison`).

    Workers push through kombu's channel client, which adds the ``global_keyprefix`` itself;
    a client of our own passes it as ``prefix``
    (:func:`jobqueue.transport.internals.global_keyprefix`)."""
    return prefix + queue + DEAD_SUFFIX
