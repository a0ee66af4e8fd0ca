"""Submit records that must reach a replica before their job's message is sent.

With ``JOBQUEUE_REDIS_WAIT_REPLICAS`` (on by default with Sentinel) ``submit_job()`` returns
only once its message and its submit record are on a replica. The broker's channel
``WAIT``\\ s after each message (:mod:`jobqueue.transport.kombu_redis`); on the same Redis
server that also covers the records written before it, so only a result backend of its own
needs :func:`replicate_records`.
"""

from __future__ import annotations

from typing import Any

from jobqueue.shared.records import result_client
from jobqueue.transport.replication import wait_after


def replicate_records(app: Any, what: str, job_id: str | None = None) -> None:
    """Wait until the replicas asked for hold the records just written to the result backend
    (nothing when none are asked for, or when the backend is the broker's own URL); raises
    :class:`~jobqueue.errors.NotReplicated` (before the message is sent) when they do not."""
    settings = app.settings
    replicas = settings.wait_replicas
    if not replicas or settings.result_backend == settings.broker_url:
        return
    client = result_client(app)
    if client is not None:
        wait_after(client, replicas, settings.redis_wait_timeout, what, job_id)
