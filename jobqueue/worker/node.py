"""Our worker class: Celery's, with jobqueue's concerns, default node name and queues.

``celery -A jobqueue worker -Q gpu0`` builds it (``jobqueue.app`` names it as its worker
class): it installs the worker's concerns (:mod:`jobqueue.worker.concerns`) into the app, then
becomes node ``gpu0@<machine>`` consuming ``gpu0``, its services' queues, its machine's queue
and its own worker queue.
"""

from __future__ import annotations

from typing import Any

from celery.apps.worker import Worker as CeleryWorker
from celery.utils.nodenames import default_nodename, host_format
from celery.worker.consumer import Consumer as CeleryConsumer

from jobqueue.worker.concerns import install
from jobqueue.worker.identity import WorkerIdentity, split_queues


class Consumer(CeleryConsumer):  # type: ignore[misc]  # Celery ships no type information
    """Celery's consumer without native delayed delivery, which Celery includes with quorum
    queues: it serves topic exchanges only (jobqueue's queues are direct, so countdowns are
    held by the worker as on classic queues), and on every reconnect it retries each broker
    URL for ~15 s -- with a cluster node down, the worker would consume that much later."""

    class Blueprint(CeleryConsumer.Blueprint):  # type: ignore[misc]
        default_steps = [step for step in CeleryConsumer.Blueprint.default_steps
                         if not step.endswith(":DelayedDelivery")]


class Worker(CeleryWorker):  # type: ignore[misc]  # Celery ships no type information
    """Celery's worker with jobqueue's concerns and identity-derived defaults."""

    def __init__(self, app: Any = None, hostname: str | None = None, **kwargs: Any) -> None:
        app = install(app or self.app)  # before Celery builds the blueprints from app.steps
        app.conf.worker_consumer = f"{__name__}:Consumer"
        # Publisher confirms are for submits (a client's): a worker publishing its events and
        # heartbeats with confirms would block its event loop on a frozen AMQP link -- the very
        # heartbeat check that notices the freeze would never run.
        options = dict(app.conf.broker_transport_options or {})
        if options.pop("confirm_publish", None) is not None:
            app.conf.broker_transport_options = options
        if hostname is None or hostname == host_format(default_nodename(None)):
            # Celery's CLI fills in "celery@<host>" when -n is not given: ours is gpu<N>@<machine>.
            hostname = None
        identity = WorkerIdentity.build(app.settings, split_queues(kwargs.get("queues")), hostname)
        self.jobqueue_identity = identity
        kwargs["queues"] = list(identity.queues)
        if kwargs.get("heartbeat_interval") is None:
            kwargs["heartbeat_interval"] = app.settings.heartbeat_interval
        super().__init__(app=app, hostname=identity.node_name, **kwargs)
