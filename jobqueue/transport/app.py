"""The Celery application: :func:`create_app` builds it from :class:`~jobqueue.config.Settings`.

``celery -A jobqueue worker -Q gpu0`` finds ``jobqueue.app``, built with the environment's
settings. Tests build their own with ``create_app(Settings(...))``.

The app holds no worker code: it sends tasks by name. A worker process gets the job task, its
signal handlers and bootsteps from the worker class the app names (``worker_class``:
``jobqueue.app`` names :class:`jobqueue.worker.node.Worker`, which installs
:mod:`jobqueue.worker.concerns` into the app), so dependencies point one way: the worker
imports the transport, never the reverse.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from celery import Celery
from kombu.utils.objects import cached_property

from jobqueue.config import Settings
from jobqueue.errors import ConfigError
from jobqueue.shared.routing import BROKER_MAX_PRIORITY, DEFAULT_PRIORITY, broker_priority
from jobqueue.transport.redis_clients import require_master_name
from jobqueue.transport.redis_health import backend_settings, transport_options
from jobqueue.transport.redis_urls import is_redis_url, is_sentinel_url
from jobqueue.transport.results import backend_url

#: Celery's own worker class.
CELERY_WORKER_CLASS = "celery.apps.worker:Worker"


class JobqueueCelery(Celery):  # type: ignore[misc]  # Celery ships no type hints
    """A Celery app that carries its :class:`Settings` and, inside a worker, the worker's
    runtime (connectors, identity, running jobs)."""

    settings: Settings
    #: Set by the worker bootstep inside a worker process; None elsewhere.
    runtime: Any = None
    #: The worker class ``celery worker`` builds (``module:Class``, imported only then);
    #: Celery's own unless :func:`create_app` was given one.
    worker_class: str = CELERY_WORKER_CLASS
    #: ``app.amqp``: Celery's, with queues that get quorum arguments when the settings ask.
    amqp_cls = "jobqueue.transport.rabbitmq:JobqueueAMQP"

    def close(self) -> None:
        """Celery's close, and this thread's result subscription closed with it
        (:class:`~jobqueue.transport.results.ResultConsumer`): Celery's close leaves it open,
        and a result of this app collected later would reconnect to unsubscribe."""
        backend = self._backend  # PRIVATE Celery: this thread's backend, None if never built
        close = getattr(getattr(backend, "result_consumer", None), "close", None)
        if callable(close):
            close()
        super().close()

    @cached_property
    def Worker(self) -> Any:  # noqa: N802 - Celery's name
        """The worker class (:attr:`worker_class`) bound to this app."""
        return self.subclass_with_self(self.worker_class)


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """Transport options for the broker in ``settings``.

    On Redis, a short visibility timeout lets a dead worker's job come back quickly, a lease
    (see :mod:`jobqueue.worker.lease`) keeps a live job from being handed out twice, and the
    restore sweep runs every ``lease_interval`` seconds instead of kombu's ~100 s.
    """
    if not settings.is_redis:
        # RabbitMQ with quorum queues: publisher confirms, so a submit returns once a majority
        # of the queue's nodes have the message (workers and the collector publish without).
        return {"confirm_publish": True} if settings.rabbitmq_queue_type == "quorum" else {}
    return {
        "visibility_timeout": settings.visibility_timeout,
        "unacked_restore_interval": max(1, round(settings.lease_interval)),
        "unacked_restore_throttle": 1,
        # The restore sweep's lock: kombu holds it for 5 minutes by default, so a worker killed
        # while sweeping would stop every restore in the fleet that long. A sweep takes
        # milliseconds, and a message restored twice cannot be queued twice (kombu restores
        # each one in a WATCH transaction on the unacked hash), so the lock lasts one timeout.
        "unacked_mutex_expire": max(1, round(settings.visibility_timeout)),
        # One Redis list per broker priority level (see jobqueue.shared.routing.broker_priority).
        "priority_steps": list(range(BROKER_MAX_PRIORITY + 1)),
        "queue_order_strategy": "priority",
        # No custom "sep": kombu's separator is also the one inside exchange binding keys, and
        # stock tooling (celery -b URL inspect/status, Flower --broker) writes them with the
        # default; keys built by hand use jobqueue.transport.internals.REDIS_KEY_SEP.
        # Dead-peer detection on every broker connection (see jobqueue.transport.redis_health).
        **transport_options(settings.redis_health_interval),
        **wait_options(settings),
    }


def wait_options(settings: Settings) -> dict[str, Any]:
    """The broker channel's Redis ``WAIT`` after each message it queues (see
    :mod:`jobqueue.transport.kombu_redis`): none when ``settings.wait_replicas`` is 0."""
    if not settings.wait_replicas:
        return {}
    return {"jobqueue_wait_replicas": settings.wait_replicas,
            "jobqueue_wait_timeout": settings.redis_wait_timeout}


def merged_options(theirs: Any, ours: dict[str, Any], master: str) -> dict[str, Any]:
    """Transport options: the config module's (``theirs``: ``master_name``, ``sentinel_kwargs``,
    ``global_keyprefix``...) kept, ours on top (jobqueue's lease, priorities and health checks
    rely on them), and the Sentinel master's name when there is one."""
    merged = {**dict(theirs or {}), **ours}
    if master:
        merged["master_name"] = master
    return merged


#: Where jobqueue's Celery defaults live (see docs/configuration.md).
DEFAULTS_MODULE = "jobqueue.transport.defaults"


def celery_settings(module: ModuleType) -> dict[str, Any]:
    """The Celery settings a config module defines: its public lower-case names, less the
    modules and functions it imported."""
    return {name: value for name, value in vars(module).items()
            if not name.startswith("_") and name.islower()
            and not isinstance(value, ModuleType) and not callable(value)}


def _import_config(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(f"JOBQUEUE_CELERY_CONFIG={name!r}: cannot import it ({exc})") from exc


def configure_app(settings: Settings | None = None, *, main: str = "jobqueue") -> JobqueueCelery:
    """A Celery app configured for ``settings`` (broker, backend, priorities, transport) with
    no tasks and no worker steps: what a client-only process such as the monitor needs."""
    settings = (settings or Settings.from_env()).resolved()
    app = JobqueueCelery(main, set_as_current=False)
    app.settings = settings
    # The packaged defaults, never a ``celeryconfig`` that happens to be on sys.path.
    app.config_from_object(DEFAULTS_MODULE)
    if settings.celery_config:
        app.conf.update(celery_settings(_import_config(settings.celery_config)))
    sentinel = is_sentinel_url(settings.broker_url) or is_sentinel_url(settings.result_backend)
    master = require_master_name(settings) if sentinel else ""
    app.conf.update(
        broker_url=settings.broker_url,
        result_backend=settings.result_backend,
        broker_transport_options=merged_options(
            app.conf.broker_transport_options, broker_transport_options(settings),
            master if is_sentinel_url(settings.broker_url) else ""),
        result_backend_transport_options=merged_options(
            app.conf.result_backend_transport_options, {"retry_policy": {"timeout": 5.0}},
            master if is_sentinel_url(settings.result_backend) else ""),
        # Priorities: 20 broker levels on both brokers (x-max-priority on RabbitMQ; our Redis
        # transport lifts kombu's 0..9 clamp); a message sent without one gets the default.
        task_queue_max_priority=BROKER_MAX_PRIORITY,
        task_default_priority=broker_priority(DEFAULT_PRIORITY, is_redis=settings.is_redis),
        # AMQP heartbeats: a frozen link is dropped after ~2x this (Redis has its own checks).
        broker_heartbeat=settings.broker_heartbeat,
    )
    if not settings.is_redis and settings.rabbitmq_queue_type == "quorum":
        # Quorum queues (jobqueue.transport.rabbitmq): no x-max-priority (RabbitMQ 3.x refuses
        # it), per-consumer QoS, and the native delayed delivery Celery sets up for countdowns.
        app.conf.update(task_default_queue_type="quorum", task_create_missing_queue_type="quorum",
                        task_queue_max_priority=None, worker_detect_quorum_queues=True)
    if is_redis_url(settings.result_backend):
        # Celery's Redis backend plus writes that ride with a job's next state (one round trip).
        app.conf.update(backend_settings(settings.redis_health_interval),
                        result_backend=backend_url(settings.result_backend))
    if settings.is_redis:
        from jobqueue.transport.kombu_redis import SENTINEL_TRANSPORT_PATH, TRANSPORT_PATH

        app.conf.broker_transport = SENTINEL_TRANSPORT_PATH if is_sentinel_url(settings.broker_url) else TRANSPORT_PATH
    return app


def create_app(settings: Settings | None = None, *, main: str = "jobqueue",
               worker_class: str = CELERY_WORKER_CLASS) -> JobqueueCelery:
    """Build the Celery app: the packaged defaults (and ``settings.celery_config``),
    ``settings`` on top; a worker it builds is ``worker_class`` (``module:Class``).

    No task is registered here: clients send ``jobqueue.run_job`` by name, and the worker
    class installs the worker's tasks, handlers and steps (see :mod:`jobqueue.worker.concerns`)."""
    app = configure_app(settings, main=main)
    app.worker_class = worker_class
    return app
