"""A worker's buffered events leave in windows: one message per window, not one per event.

Celery buffers a worker's ``task`` events (and jobqueue's ``connector`` group with them,
:func:`~jobqueue.transport.internals.buffer_event_group`) and has its event loop publish the
buffer at its next turn (``Consumer.on_send_event_buffered``). A job's ``task-received`` is
sent by the loop and its ``task-started`` by the pool's thread a moment later, so in
practice each lifecycle event of a short job leaves as a message of its own: about three
broker publishes per job on the worker, three pub/sub messages for every monitor to decode.

:func:`flush_in_windows` has the loop publish the buffer :data:`EVENT_WINDOW` seconds after
the first event of a window instead: a no-op job's ``task-received``, ``task-started``,
``task-succeeded`` (and its connector's status) then leave together, in one message per
group, and under load a window carries several jobs' events. Events keep their order and
their own timestamps; a monitor sees them at most one window later. Celery's own size limit
(``buffer_limit``: a full buffer is published at once) and every other flush (the worker
stopping, the consumer reconnecting) are unchanged.

PRIVATE TOUCHPOINTS (Celery 5.4-5.7, kombu 5.4-5.7; checked by
tests/jobqueue/transport/test_event_windows.py): the dispatcher's ``on_send_buffered`` hook
(called after each buffered send, from any thread; Celery's is the consumer's
``on_send_event_buffered``, kept and called at the window's end) and the consumer's ``hub``
(kombu's event loop: ``call_soon`` is safe from any thread, ``call_later`` is run in the
loop's own thread).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

#: Seconds a worker's buffered events wait for others to leave with (see the module doc).
EVENT_WINDOW = 0.01


class WindowedFlush:
    """The dispatcher's ``on_send_buffered`` hook: the first event of a window arms Celery's
    own hook (``flush_soon``: the loop publishes the buffer at its next turn) :data:`EVENT_WINDOW`
    seconds later; the events buffered meanwhile ride with it."""

    def __init__(self, hub: Any, flush_soon: Callable[[], Any], window: float = EVENT_WINDOW) -> None:
        self._hub, self._flush_soon, self._window = hub, flush_soon, window
        self._lock = threading.Lock()
        self._armed = False

    def __call__(self) -> None:
        """An event was buffered (any thread)."""
        with self._lock:
            if self._armed:
                return
            self._armed = True
        self._hub.call_soon(self._arm)

    def _arm(self) -> None:
        """In the loop's thread: the window's end."""
        self._hub.call_later(self._window, self._fire)

    def _fire(self) -> None:
        with self._lock:
            self._armed = False  # an event buffered from here on opens the next window
        self._flush_soon()  # Celery's flush, at the loop's next turn, failing as it always did


def flush_in_windows(consumer: Any, window: float = EVENT_WINDOW) -> bool:
    """Have ``consumer``'s event dispatcher publish its buffered events in windows of
    ``window`` seconds (see the module doc); False where Celery does not buffer them (no event
    loop, events off), nothing changed then. Called each time the consumer (re)connects: the
    dispatcher is new each time."""
    dispatcher = getattr(consumer, "event_dispatcher", None)
    hub = getattr(consumer, "hub", None)
    if dispatcher is None or hub is None or window <= 0 or not getattr(dispatcher, "on_send_buffered", None):
        return False
    hook = dispatcher.on_send_buffered
    if isinstance(hook, WindowedFlush):
        return True
    dispatcher.on_send_buffered = WindowedFlush(hub, hook, window)
    return True
