"""A kombu Redis transport's event-loop tick without the readers it re-adds each turn.

kombu's Redis transport (``Transport.register_with_event_loop``) puts an ``on_tick`` callback
in the worker's event loop that runs at every turn of the loop: the poller's
``on_poll_start`` (send a BRPOP when none is out, subscribe the event channel), then
``Hub.add_reader`` for every socket the poller watches. A socket the hub reads already is
registered with epoll again all the same, which fails with ``EEXIST`` (an exception raised
and swallowed, twice per turn, several turns per job): about 6% of a busy worker's CPU.

:func:`lean_poll_start` puts an equivalent callback in its place that adds a reader only for a
socket the hub does not read with the transport's handler. The poller registers each new
socket with epoll itself (``MultiChannelPoller._register``, for a new connection or a socket
reusing a closed one's number) and every removal goes through the hub
(``Hub.remove_reader``/``remove``, which drop the reader as well), so a reader the hub holds
is one epoll has.

PRIVATE TOUCHPOINTS (kombu 5.4-5.7; checked by tests/jobqueue/transport/test_kombu_loop.py):
``Transport.cycle`` (the ``MultiChannelPoller``: ``on_poll_start``, ``fds``), ``Transport.on_readable``,
the hub's ``on_tick`` set and ``readers`` dict (fd -> ``(callback, args)``) and ``add_reader``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def lean_poll_start(transport: Any, register: Callable[[], None], loop: Any) -> None:
    """Run kombu's ``register`` (the transport's ``register_with_event_loop`` on ``loop``), then
    swap the ``on_tick`` callback it added for one that re-adds no reader the hub has."""
    before = set(loop.on_tick)
    register()
    added = [callback for callback in loop.on_tick if callback not in before]
    if len(added) != 1:  # not the kombu this was written for: keep its own callback
        return
    cycle = transport.cycle
    poll_start = cycle.on_poll_start
    on_readable = transport.on_readable
    readers = loop.readers
    add_reader = loop.add_reader

    def on_poll_start() -> None:
        poll_start()
        for fd in cycle.fds:
            reader = readers.get(fd)
            if reader is None or reader[0] != on_readable:
                add_reader(fd, on_readable, fd)

    loop.on_tick.discard(added[0])
    loop.on_tick.add(on_poll_start)
