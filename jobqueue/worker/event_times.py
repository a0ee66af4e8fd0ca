"""One clock read per time: a job's events carry the very times its record holds.

A job's times are written twice: in its facts (:mod:`jobqueue.shared.job_record`, the
monitor's authority) and in the Celery events its worker sends (the monitor's fast path).
Celery stamps each event when it sends it, a few milliseconds away from the clock read the
worker wrote into the record; every completed job then got a ``corrected`` repair entry for
``received_at``, ``started_at``, ``finished_at`` and ``runtime``. Here the two share each read:

* ``task-received`` and ``task-started`` are stamped as they leave, and the record takes
  those stamps (:func:`take_received`, :func:`take_started`);
* ``task-succeeded``/``task-failed``/``task-retried`` carry the end the record wrote
  (:func:`note_end`): its ``finished_at`` as their timestamp and its ``runtime``; and
  ``task-succeeded`` the whole result the backend stores (:func:`note_result`), rendered
  when the event is sent: after the result is stored, off the path to the client's ``wait()``.

The events leave through :class:`StampingDispatcher`, which the job task's strategy puts in
front of the consumer's dispatcher (:func:`stamping_consumer`). The times cross from the
event loop to the job's thread in memory: the worker's pool is threads (one process). In a
worker of another pool the dicts stay empty and Celery's own stamps go out, as before.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

from jobqueue.shared.masking import DEFAULT_PATTERN, mask_event
from jobqueue.shared.names import TASK_FAILED, TASK_RECEIVED, TASK_RETRIED, TASK_STARTED, TASK_SUCCEEDED

#: Times kept at most this many per kind (jobs received and never run: the oldest go).
MAX_KEPT = 1000
_ENDS = (TASK_SUCCEEDED, TASK_FAILED, TASK_RETRIED)

#: A job's result as its ``task-succeeded`` carries it, rendered when asked (None: too long).
Rendering = Callable[[], "str | None"]


class EventTimes:
    """The stamps shared by a job's events and its record, by job id (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kinds: dict[str, dict[str, tuple[float, float | None]]] = {
            TASK_RECEIVED: {}, TASK_STARTED: {}, "end": {}}
        self._results: dict[str, Rendering] = {}

    def put_result(self, job_id: str, text: Rendering) -> None:
        with self._lock:
            if len(self._results) >= MAX_KEPT:
                for key in list(self._results)[:MAX_KEPT // 2]:
                    self._results.pop(key, None)
            self._results[job_id] = text

    def take_result(self, job_id: str) -> str | None:
        with self._lock:
            render = self._results.pop(job_id, None)
        try:
            return render() if render is not None else None
        except Exception:  # an unprintable result: the event carries Celery's own repr
            return None

    def put(self, kind: str, job_id: str, when: float, runtime: float | None = None) -> None:
        with self._lock:
            kept = self._kinds[kind]
            if len(kept) >= MAX_KEPT:
                for key in list(kept)[:MAX_KEPT // 2]:
                    kept.pop(key, None)
            kept[job_id] = (when, runtime)

    def take(self, kind: str, job_id: str) -> tuple[float, float | None] | None:
        with self._lock:
            return self._kinds[kind].pop(job_id, None)


def times_of(app: Any) -> EventTimes:
    """The app's :class:`EventTimes` (made on first use)."""
    times: EventTimes | None = getattr(app, "_jobqueue_event_times", None)
    if times is None:
        times = app._jobqueue_event_times = EventTimes()
    return times


def take_received(app: Any, job_id: str) -> float | None:
    """When ``job_id``'s ``task-received`` said it arrived (None: no stamp here)."""
    found = times_of(app).take(TASK_RECEIVED, job_id)
    return found[0] if found else None


def take_started(app: Any, job_id: str) -> float | None:
    """When ``job_id``'s ``task-started`` said it started (None: no stamp here)."""
    found = times_of(app).take(TASK_STARTED, job_id)
    return found[0] if found else None


def note_end(app: Any, job_id: str, finished_at: float, runtime: float | None) -> None:
    """The end the record holds, for the ``task-succeeded``/``-failed``/``-retried`` to carry."""
    times_of(app).put("end", job_id, finished_at, runtime)


def note_result(app: Any, job_id: str, result: Any, limit: int, pattern: str = DEFAULT_PATTERN) -> None:
    """The whole result, for the ``task-succeeded`` to carry instead of Celery's ``saferepr``
    (which elides nesting below 3 levels: a ComfyUI job's outputs read as ``{...}`` and
    came whole only at repair): its full ``repr``, secrets masked, when under ``limit``.
    Rendered only when the event is sent (:func:`render_result`): nothing changes a result
    once its task returned it."""
    times_of(app).put_result(job_id, functools.partial(render_result, result, limit, pattern))


def render_result(result: Any, limit: int, pattern: str = DEFAULT_PATTERN) -> str | None:
    """``result``'s full ``repr``, secrets masked, or None when it is not under ``limit``."""
    text = repr(result)
    if len(text) >= limit:
        return None
    return str(mask_event({"result": text}, pattern)["result"])


class StampingDispatcher:
    """A Celery event dispatcher's stand-in that stamps a job's lifecycle events (see the
    module doc) and passes everything else through unchanged."""

    def __init__(self, dispatcher: Any, times: EventTimes) -> None:
        self._dispatcher = dispatcher
        self._times = times

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dispatcher, name)

    def __bool__(self) -> bool:
        return bool(self._dispatcher)

    def send(self, type: str, **fields: Any) -> Any:  # noqa: A002 - Celery's name
        job_id = fields.get("uuid")
        if isinstance(job_id, str) and "timestamp" not in fields:
            if type in (TASK_RECEIVED, TASK_STARTED):
                fields["timestamp"] = now = time.time()
                self._times.put(type, job_id, now)
            elif type in _ENDS:
                result = self._times.take_result(job_id) if type == TASK_SUCCEEDED else None
                if result is not None:
                    fields["result"] = result
                end = self._times.take("end", job_id)
                if end is not None:
                    fields["timestamp"] = end[0]
                    if end[1] is not None and type != TASK_RETRIED:
                        fields["runtime"] = end[1]
        return self._dispatcher.send(type, **fields)


class StampingConsumer:
    """The worker consumer as a task strategy sees it, its event dispatcher stamping."""

    def __init__(self, consumer: Any, times: EventTimes) -> None:
        self._consumer = consumer
        self._times = times

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)

    @property
    def event_dispatcher(self) -> Any:
        dispatcher = self._consumer.event_dispatcher
        return None if dispatcher is None else StampingDispatcher(dispatcher, self._times)


def stamping_consumer(app: Any, consumer: Any) -> StampingConsumer:
    """``consumer`` for a job task's strategy: its events share their times with the record."""
    return StampingConsumer(consumer, times_of(app))
