"""Celery's Redis result backend, with writes that ride in the transaction of a job's next state.

When a job's attempt ends, the worker records the end in the job's facts (:mod:`jobqueue.facts`:
``finished_at``, ``runtime``) and Celery then stores the final state (``SUCCESS``,
``FAILURE``, ``RETRY``, ...): two round trips to the same Redis, one after the other, on the
path between the job's last line and the client's ``wait()`` returning. Here the facts ride
along instead: :meth:`RedisBackend.ride_with_next_state` queues commands that the backend adds
to the ``MULTI`` in which it stores and publishes the job's next state, so the facts and the
state land together, atomically, in one round trip, and a reader never sees the one without
the other.

A rider whose state is never stored (Celery skips the write when a ``SUCCESS`` is already
there, or the task ends in ``Ignore``) is sent on its own by :meth:`RedisBackend.flush_riders`,
which the worker calls when the task is over (``task_postrun``); riders are never lost and
never kept past their task.

:func:`backend_url` names this class in ``result_backend`` (Celery's documented
``module:Class+url`` form), so the app needs no private hook to use it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery.backends.redis import RedisBackend as CeleryRedisBackend

log = logging.getLogger(__name__)

#: ``rider(pipe)``: queues commands on ``pipe`` (a Redis transaction the backend executes).
Rider = Callable[[Any], None]

#: How ``result_backend`` names this class.
BACKEND_PATH = "jobqueue.result_backend:RedisBackend"


def backend_url(url: str) -> str:
    """``result_backend`` for the Redis server at ``url``, served by :class:`RedisBackend`.

    Celery splits ``<class>+<url>`` at the first ``+``; ``redis+socket://`` is its own
    spelling of ``socket://``, so that prefix goes (as Celery's own alias lookup does)."""
    return f"{BACKEND_PATH}+{url.removeprefix('redis+')}"


class RedisBackend(CeleryRedisBackend):  # type: ignore[misc]  # Celery is untyped
    """Celery's Redis result backend plus riders: commands stored with a job's next state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._riders: dict[Any, list[Rider]] = {}
        self._riders_lock = threading.Lock()

    def ride_with_next_state(self, job_id: str, rider: Rider) -> None:
        """Queue ``rider``'s commands into the transaction that stores ``job_id``'s next state."""
        key = self.get_key_for_task(job_id)
        with self._riders_lock:
            self._riders.setdefault(key, []).append(rider)

    def _take(self, key: Any) -> list[Rider]:
        with self._riders_lock:
            return self._riders.pop(key, [])

    def _put_back(self, key: Any, riders: list[Rider]) -> None:
        with self._riders_lock:
            self._riders[key] = riders + self._riders.get(key, [])

    def flush_riders(self, job_id: str) -> None:
        """Send the riders of ``job_id`` whose state was not stored, on their own. Never raises."""
        riders = self._take(self.get_key_for_task(job_id))
        if not riders:
            return
        try:
            with self.client.pipeline() as pipe:
                for rider in riders:
                    rider(pipe)
                pipe.execute()
        except Exception:
            log.warning("could not write what rides with the state of job %s", job_id, exc_info=True)

    def set(self, key: Any, value: Any, expires: int | None = None, **retry_policy: Any) -> Any:
        """Celery's write of a state (``SETEX`` + ``PUBLISH``, retried by ``ensure``), with
        the key's riders in the same transaction."""
        riders = self._take(key)
        if not riders:
            return super().set(key, value, expires, **retry_policy)
        try:
            return self.ensure(self._set_with_riders, (key, value, expires, riders), **retry_policy)
        except Exception:
            self._put_back(key, riders)  # flush_riders sends them once the task is over
            raise

    def _set_with_riders(self, key: Any, value: Any, expires: int | None, riders: list[Rider]) -> None:
        expires = self.expires if expires is None else expires
        with self.client.pipeline() as pipe:
            if expires:
                pipe.set(key, value, ex=expires)
            else:
                pipe.set(key, value)
            pipe.publish(key, value)
            for rider in riders:
                rider(pipe)
            results = pipe.execute(raise_on_error=False)
        for result in results[:2]:  # the state itself must have been written
            if isinstance(result, Exception):
                raise result
        failed = [result for result in results[2:] if isinstance(result, Exception)]
        if failed:
            log.warning("a write riding with the state at %r failed: %s", key, failed)
