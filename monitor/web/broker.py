"""The monitor's view of the broker: a Celery app without jobqueue's tasks, and queue depths.

The monitor never imports :mod:`jobqueue.worker.task`; it only needs control/inspect, the result
backend and ``send_task`` (through :func:`jobqueue.client.jobs.submit_job`), so it builds a bare
Celery app with the same configuration the workers use.
"""

from __future__ import annotations

from typing import Any

from jobqueue.config import Settings
from jobqueue.shared.routing import BROKER_MAX_PRIORITY
from jobqueue.transport.app import JobqueueCelery, configure_app
from jobqueue.transport.internals import global_keyprefix, redis_queue_keys


def monitor_celery_app(settings: Settings) -> JobqueueCelery:
    """A Celery app on ``settings``' broker and backend, with no tasks registered."""
    app = configure_app(settings, main="jobqueue-monitor")
    app.conf.broker_connection_timeout = 3.0
    return app


def queue_depths(app: Any, queues: list[str]) -> dict[str, int]:
    """Messages waiting in each queue: Redis LLEN over the priority sub-queues, or an AMQP
    passive declare. A queue that does not exist has depth 0."""
    depths: dict[str, int] = {}
    if not queues:
        return depths
    settings: Settings = app.settings
    if settings.is_redis:
        from jobqueue.transport.redis_clients import redis_client

        client = redis_client(settings.broker_url, settings, socket_timeout=3, socket_connect_timeout=3)
        try:
            pipe = client.pipeline(transaction=False)
            prefix = global_keyprefix(app.conf.broker_transport_options)
            for queue in queues:
                for key in redis_queue_keys(queue, prefix=prefix):
                    pipe.llen(key)
            counts = pipe.execute()
        finally:
            client.close()
        steps = BROKER_MAX_PRIORITY + 1
        for i, queue in enumerate(queues):
            depths[queue] = int(sum(counts[i * steps:(i + 1) * steps]))
        return depths
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        for queue in queues:
            try:
                depths[queue] = int(channel.queue_declare(queue=queue, passive=True).message_count)
            except Exception:  # not declared yet
                depths[queue] = 0
                channel = conn.channel()
    return depths
