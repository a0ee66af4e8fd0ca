"""kombu's Redis transport with 20 priority levels instead of 10, and a BRPOP reader that
survives poison messages.

kombu clamps every Redis message priority to 0..9 (``Channel.max_priority``, not a transport
option). jobqueue gives each caller priority two broker levels (see
:func:`jobqueue.shared.routing.broker_priority`), so it needs 0..19. ``create_app`` selects this
transport (``broker_transport``) whenever the broker is Redis; everything else is kombu's.
Its BRPOP reader moves poison items aside instead of dying on them (the rules are in
:mod:`jobqueue.worker.poison`).

PRIVATE TOUCHPOINTS (kombu 5.4-5.7): with :mod:`jobqueue.transport.internals`, the only module that
relies on undocumented library behaviour; checked by tests/jobqueue/test_internals.py and
tests/jobqueue/test_poison.py.

1. ``kombu.transport.redis.Channel.max_priority`` (the clamp).
2. ``kombu.transport.redis.Channel._brpop_read``: reimplemented below (its body plus the
   envelope check); it also relies on ``_queue_cycle``, ``_in_poll``, ``connection._deliver``
   and ``_flush_brpop_reauth`` (the latter only where kombu has it).
3. ``kombu.transport.virtual.Channel.decode_body`` (the envelope check decodes the body as
   kombu's ``Message`` would).
4. ``kombu.transport.redis.Channel.conn_or_acquire``: kombu builds a new ``redis.Redis``
   around its pool for every publish, ack and restore (about 8% of a busy worker's CPU with
   redis-py 8, whose client constructor is heavy). A channel here keeps one client per pool
   (redis-py clients are thread-safe: each command borrows a pooled connection) and builds a
   new one only when kombu replaced the pool (``_pool``, reset on reconnect).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis

from jobqueue.shared.records import dead_letter_key
from jobqueue.shared.routing import BROKER_MAX_PRIORITY
from jobqueue.worker.poison import (
    HOOK_ATTR,
    Poison,
    check_envelope,
    poison_from_item,
    push_dead_letter,
)

log = logging.getLogger("jobqueue.worker.poison")


class _ClientCache:
    """One ``redis.Redis`` per connection pool, rebuilt when the pool changes."""

    def __init__(self) -> None:
        self.client: Any = None

    def get(self, pool: Any, build: Callable[[], Any]) -> Any:
        client = self.client
        if client is None or client.connection_pool is not pool:
            client = self.client = build()
        return client


class Channel(kombu_redis.Channel):
    """Redis channel that keeps priorities up to :data:`BROKER_MAX_PRIORITY` and never
    delivers (nor dies on) a message it cannot decode (see :mod:`jobqueue.worker.poison`).

    A poison item is dead-lettered through a pooled client, then handed to the hook the
    worker's :class:`~jobqueue.worker.poison.PoisonStep` left on the connection (which fails
    its job).
    """

    max_priority = BROKER_MAX_PRIORITY  # PRIVATE TOUCHPOINT 1

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:  # PRIVATE TOUCHPOINT 4
        if client:
            yield client
            return
        self_: Any = self
        cache = getattr(self_, "_jobqueue_clients", None)
        if cache is None:
            cache = self_._jobqueue_clients = _ClientCache()
        yield cache.get(self_.pool, self_._create_client)

    def _brpop_read(self, **options: Any) -> bool:  # PRIVATE TOUCHPOINT 2
        self_: Any = self
        poison: Poison | None = None
        try:
            try:
                dest__item = self_.client.parse_response(self_.client.connection, "BRPOP", **options)
            except self_.connection_errors:
                # A connection error: disconnect so the next iteration reconnects (as kombu does).
                self_.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = (dest.decode() if isinstance(dest, bytes) else dest).rsplit(self_.sep, 1)[0]
            self_._queue_cycle.rotate(dest)
            payload, reason = check_envelope(item, self_.decode_body)  # PRIVATE TOUCHPOINT 3
            if reason is None:
                self_.connection._deliver(payload, dest)
                return True
            poison = poison_from_item(dest, item, payload, reason)
        finally:
            self_._in_poll = None
            flush = getattr(self_, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()
        self._discard(poison)
        return True

    def _discard(self, poison: Poison) -> None:
        self_: Any = self
        hook = getattr(self_.connection.client, HOOK_ATTR, None)
        log.error("poison message on queue %s discarded (%s); moved to %s", poison.queue, poison.reason,
                  dead_letter_key(poison.queue))
        try:
            with self_.conn_or_acquire() as client:
                push_dead_letter(client, poison, getattr(hook, "hostname", None))
        except Exception:
            log.exception("could not dead-letter a poison message of queue %s", poison.queue)
        if hook is not None:
            hook(poison)


class Transport(kombu_redis.Transport):
    """Redis transport using :class:`Channel`."""

    Channel = Channel


#: Value for Celery's ``broker_transport`` setting.
TRANSPORT_PATH = f"{__name__}:Transport"
