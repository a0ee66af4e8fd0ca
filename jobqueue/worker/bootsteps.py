"""Worker bootsteps: what a jobqueue worker adds to Celery's worker.

* :class:`RuntimeStep` builds the :class:`~jobqueue.worker.runtime.WorkerRuntime`
  (identity + connectors), starts and stops it.
* :class:`LeaseStep` keeps running jobs' Redis leases fresh (see :mod:`jobqueue.worker.lease`).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import bootsteps

from jobqueue.worker.identity import WorkerIdentity
from jobqueue.worker.lease import LeaseKeeper
from jobqueue.worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)


def _identity_of(worker: Any) -> WorkerIdentity:
    identity = getattr(worker, "jobqueue_identity", None)
    if identity is None:  # a worker not built by our Worker class (e.g. test fixtures)
        queues = list(worker.app.amqp.queues.consume_from or ())
        identity = WorkerIdentity.build(worker.app.settings, queues, worker.hostname)
        worker.jobqueue_identity = identity
    return identity


class RuntimeStep(bootsteps.StartStopStep):
    """Own the worker's connectors for the worker's whole life."""

    label = "jobqueue runtime"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.runtime: WorkerRuntime | None = None

    def create(self, worker: Any) -> None:
        self.runtime = WorkerRuntime(worker.app.settings, _identity_of(worker))
        worker.app.runtime = self.runtime

    def start(self, worker: Any) -> None:
        assert self.runtime is not None
        self.runtime.start()
        self.runtime.check_health()

    def stop(self, worker: Any) -> None:
        if self.runtime is not None:
            self.runtime.stop()

    def shutdown(self, worker: Any) -> None:
        self.stop(worker)


class LeaseStep(bootsteps.StartStopStep):
    """Renew the Redis lease of held messages (no-op on RabbitMQ, which acks for real)."""

    label = "jobqueue lease"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.keeper: LeaseKeeper | None = None

    def include_if(self, worker: Any) -> bool:
        return bool(worker.app.settings.is_redis)

    def create(self, worker: Any) -> None:
        settings = worker.app.settings
        client = redis.Redis.from_url(settings.broker_url, socket_timeout=5, socket_connect_timeout=5)
        self.keeper = LeaseKeeper(client, interval=settings.lease_interval)

    def start(self, worker: Any) -> None:
        assert self.keeper is not None
        self.keeper.start()

    def stop(self, worker: Any) -> None:
        if self.keeper is not None:
            self.keeper.stop()

    def shutdown(self, worker: Any) -> None:
        self.stop(worker)


def install_worker_steps(app: Any) -> None:
    """Add jobqueue's bootsteps and remote control commands to ``app``."""
    app.steps["worker"].add(RuntimeStep)
    app.steps["worker"].add(LeaseStep)
    from jobqueue.worker import control  # registers the control commands

    control.register()
