"""jobqueue's Redis result backend: a state in one round trip, with writes that ride along.

Celery's Redis backend stores each state of a task (``STARTED``, ``SUCCESS``, ``FAILURE``,
``RETRY``, ...) in two round trips: it reads the stored record (never to write over a
``SUCCESS``), then writes and publishes. And when an attempt ends, the worker records the end in
the job's facts (:mod:`jobqueue.shared.job_record`: ``finished_at``, ``runtime``) just before Celery stores
the final state: a third round trip to the same Redis, on the path between the job's last line
and the client's ``wait()`` returning.

:class:`RedisBackend` (built in :mod:`jobqueue.transport.internals`, which holds every private Celery
touchpoint) stores a state in one round trip: the same guard inside a Lua script, and in the
same ``MULTI`` the commands queued by :meth:`~RedisBackend.ride_with_next_state`, so the
facts of an attempt's end and its final state land together, atomically: a reader never sees
the one without the other.

A job's ``SUCCESS`` also acks its message in the same write, when the broker is the same Redis
(:mod:`jobqueue.transport.early_ack`): kombu's ack then sends nothing, one round trip fewer.

A rider whose state is never stored (the task ends in ``Ignore``) is sent on its own by
:meth:`~RedisBackend.flush_riders`, which the worker calls when the task is over
(``task_postrun``); riders are never lost and never kept past their task.

:func:`backend_url` names this class in ``result_backend`` (Celery's ``module:Class+url``
form), so the app needs no hook to use it.

:func:`store_guarded` stores a state that must never land over a result (a running job's
``PROGRESS``) with the same guarded write, in one round trip, on any backend.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import states as celery_states
from celery.backends.redis import ResultConsumer as CeleryResultConsumer
from celery.backends.redis import SentinelBackend as CelerySentinelBackend

from jobqueue.errors import NotReplicated
from jobqueue.transport.early_ack import EarlyAck, early_ack
from jobqueue.transport.internals import Rider, RidingRedisBackend
from jobqueue.transport.redis_urls import is_sentinel_url
from jobqueue.transport.replication import wait_after
from jobqueue.transport.riders import rider_for

__all__ = ["BACKEND_PATH", "SENTINEL_BACKEND_PATH", "RedisBackend", "ResultConsumer", "Rider", "SentinelBackend",
           "backend_url", "store_guarded"]

log = logging.getLogger(__name__)

#: How ``result_backend`` names the class.
BACKEND_PATH = "jobqueue.transport.results:RedisBackend"
#: How ``result_backend`` names the class on a Sentinel group.
SENTINEL_BACKEND_PATH = "jobqueue.transport.results:SentinelBackend"


class ResultConsumer(CeleryResultConsumer):  # type: ignore[misc]  # Celery is untyped
    """Celery's result consumer (the pub/sub subscription ``get()`` and ``wait()`` listen on),
    which can be closed for good: its app closed (:meth:`JobqueueCelery.close
    <jobqueue.transport.app.JobqueueCelery.close>`), a result collected later unsubscribes
    from nothing. Celery's would reconnect to unsubscribe, from the garbage collector, in
    whatever thread runs it: to a server that may be gone by then, waiting out redis-py's
    reconnect backoff (seconds) each time."""

    closed = False

    def close(self) -> None:
        """Close the subscription; no later call touches a connection."""
        self.closed = True
        self.stop()

    def cancel_for(self, task_id: Any) -> None:
        if not self.closed:
            super().cancel_for(task_id)


class RedisBackend(RidingRedisBackend):
    """:class:`~jobqueue.transport.internals.RidingRedisBackend`, and a job's final state
    (``SUCCESS``, ``FAILURE``, ``REVOKED``) reaches ``JOBQUEUE_REDIS_WAIT_REPLICAS`` replicas
    before it is reported stored (Redis ``WAIT`` behind a fence, see
    :mod:`jobqueue.transport.replication`): the worker acks the job's message only after
    that (or in the same transaction as a ``SUCCESS``, replicated with it), so a failover
    cannot keep the ack and lose the result. Replicas that do not confirm in
    time cost a warning, never the job (the state is on the master)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The message ack riding in the guarded write of a result key (:mod:`~jobqueue.transport.early_ack`).
        self._acks: dict[Any, EarlyAck] = {}

    #: Celery builds ``result_consumer`` from this class.
    ResultConsumer = ResultConsumer

    def on_task_call(self, producer: Any, task_id: Any) -> None:
        """Celery subscribes to a task's result before its message is sent; a job whose records
        ride with its message (a submit, :mod:`jobqueue.transport.riders`) subscribes right
        after the message is written instead, so the subscription's write is not on the path
        to the worker. Nothing is missed: ``get()`` reads the stored state once subscribed."""
        submit = rider_for(task_id)
        if submit is None:
            super().on_task_call(producer, task_id)
            return
        submit.later.append(lambda: super(RedisBackend, self).on_task_call(producer, task_id))

    def _acking(self, key: Any) -> tuple[list[Any], list[Any]]:
        ack = self._acks.get(key)
        return ([ack.index_key, ack.hash_key], [ack.tag]) if ack is not None else ([], [])

    def _store_result(self, task_id: Any, result: Any, state: str, traceback: Any = None,
                      request: Any = None, **kwargs: Any) -> Any:
        ack = early_ack(task_id, self.client) if state == celery_states.SUCCESS and self._guarded else None
        key = self.get_key_for_task(task_id) if ack is not None else None
        if ack is not None:
            self._acks[key] = ack
        try:
            stored = super()._store_result(task_id, result, state, traceback, request=request, **kwargs)
        finally:
            if ack is not None:
                self._acks.pop(key, None)
        if ack is not None:
            ack.done()
        settings: Any = getattr(self.app, "settings", None)
        replicas = settings.wait_replicas if settings is not None else 0
        if replicas and state in celery_states.READY_STATES:
            try:
                wait_after(self.client, replicas, settings.redis_wait_timeout, f"the {state} of job {task_id}",
                           str(task_id))
            except NotReplicated as exc:
                log.warning("%s", exc)
        return stored


class SentinelBackend(RedisBackend, CelerySentinelBackend):  # type: ignore[misc]
    """:class:`RedisBackend` on the master of a Sentinel group (Celery's Sentinel backend
    finds the master, and finds it again after a failover)."""


def backend_url(url: str) -> str:
    """``result_backend`` for the Redis server (or Sentinel group) at ``url``, served by
    :class:`RedisBackend` (:class:`SentinelBackend`).

    Celery splits ``<class>+<url>`` at the first ``+``; ``redis+socket://`` is its own
    spelling of ``socket://``, so that prefix goes (as Celery's own alias lookup does)."""
    if is_sentinel_url(url):
        return f"{SENTINEL_BACKEND_PATH}+{url}"
    return f"{BACKEND_PATH}+{url.removeprefix('redis+')}"


def store_guarded(backend: Any, job_id: str, meta: Any, state: str, request: Any = None) -> bool:
    """Store ``meta`` as ``job_id``'s ``state``, never over a ``SUCCESS`` (False when one was
    kept): one round trip on :class:`RedisBackend` (:meth:`~RedisBackend.store_guarded`),
    ``store_result`` (Celery's own guard) on any other backend."""
    if isinstance(backend, RedisBackend):
        return backend.store_guarded(job_id, meta, state, request)
    backend.store_result(job_id, meta, state, request=request)
    return True
