"""kombu's Redis transport with 20 priority levels instead of 10, and a BRPOP reader that
survives poison messages.

kombu clamps every Redis message priority to 0..9 (``Channel.max_priority``, not a transport
option). jobqueue gives each caller priority two broker levels (see
:func:`jobqueue.shared.routing.broker_priority`), so it needs 0..19. ``create_app`` selects this
transport (``broker_transport``) whenever the broker is Redis; everything else is kombu's.
Its BRPOP reader asks the connection's poison hook (:func:`set_poison_hook`; the worker's is
:class:`jobqueue.worker.poison.PoisonHandler`, which holds the rules) whether an item can be
delivered, and hands it the items it cannot: they are moved aside instead of killing the
worker. A connection without a hook (a client's) delivers as kombu does.

PRIVATE TOUCHPOINTS (kombu 5.4-5.7): with :mod:`jobqueue.transport.internals`, the only module that
relies on undocumented library behaviour; checked by tests/jobqueue/transport/test_internals.py and
tests/jobqueue/worker/test_poison.py.

1. ``kombu.transport.redis.Channel.max_priority`` (the clamp).
2. ``kombu.transport.redis.Channel._brpop_read``: reimplemented below (its body plus the
   poison hook's check); it also relies on ``_queue_cycle``, ``_in_poll``, ``connection._deliver``
   and ``_flush_brpop_reauth`` (the latter only where kombu has it).
3. ``kombu.transport.virtual.Channel.decode_body`` (handed to the hook, whose envelope check
   decodes the body as kombu's ``Message`` would).
4. ``kombu.transport.redis.Channel.conn_or_acquire``: kombu builds a new ``redis.Redis``
   around its pool for every publish, ack and restore (about 8% of a busy worker's CPU with
   redis-py 8, whose client constructor is heavy). A channel here keeps one client per pool
   (redis-py clients are thread-safe: each command borrows a pooled connection) and builds a
   new one only when kombu replaced the pool (``_pool``, reset on reconnect).
5. ``kombu.transport.redis.Channel._put``'s ``_publish_batch`` keyword (kombu 5.7: an object
   with ``add(command, *args)``; :data:`KOMBU_BATCHES` says whether the installed kombu has it):
   with ``jobqueue_wait_replicas`` set or a rider waiting for the message
   (:mod:`jobqueue.transport.riders`: the job's submit record), ``_put`` collects the commands
   kombu would send for a message and sends them in one pipeline, after the rider's commands
   inside one ``MULTI``/``EXEC`` and before a Redis ``WAIT`` (see
   :mod:`jobqueue.transport.replication`); that pipeline has no redis-py response callbacks
   (``Pipeline.response_callbacks``: the commands inside ``MULTI`` answer ``QUEUED``).
   Without a ``WAIT``, a rider's transaction is written at once and its replies are read when
   Celery's ``task-sent`` event for it (``_put_fanout``, routing key ``task.sent``, the same
   keyword) has followed it on the same connection (:mod:`jobqueue.transport.ride_batch`, which
   also reads redis-py's ``Connection._sock``: a closed connection is not written again).
6. ``Channel._q_for_pri`` and ``_get_message_priority`` (kombu's key of a message's priority
   list) and ``QoS._delivered`` (the tags kombu recorded as unacked), to put back an item
   popped just before the broker went away (its QoS write failed, so no one else holds it).
7. ``kombu.transport.redis.Channel._brpop_start``: reimplemented below (its body with the
   queues in the order of the connection's fair-share hook, :func:`set_fair_order`, each
   order's command packed once (redis-py's ``pack_command``, ``send_packed_command``); it relies
   on ``_queue_cycle.consume``, ``active_queues``, ``_q_for_pri``, ``priority_steps``,
   ``brpop_timeout``, ``global_keyprefix`` and ``client._prefix_args``). Without a hook (a
   client's connection, a worker with fair share off) kombu's own body runs.
8. ``kombu.transport.redis.Channel.active_queues`` and ``Channel.qos.can_consume()`` (whether the
   channel should have a BRPOP out: :func:`brpop_expected`), read by the worker's link watch
   (:mod:`jobqueue.worker.linkwatch`), which :func:`last_brpop_reply` also serves.
9. ``kombu.transport.virtual.Transport.channels``, a Redis channel's ``_pool``, ``_async_pool``
   and ``subclient``, redis-py's ``ConnectionPool._available_connections`` /
   ``_in_use_connections`` and ``Connection._sock``: the sockets :func:`sever` shuts; a kombu
   connection pool's ``_dirty`` and ``_resource.queue`` (:func:`sever_pool`).
10. ``kombu.transport.redis.Transport.register_with_event_loop``'s ``on_tick`` callback:
    replaced by :func:`jobqueue.transport.kombu_loop.lean_poll_start` (see there).

The BRPOP reader also stamps each reply Redis sends (:func:`last_brpop_reply`): an idle worker's
BRPOP is answered at least every ``brpop_timeout`` (1 s), so a long silence while one is due
means a frozen link (or an event loop held by a command on a dead socket): the worker's link
watch then reconnects its consumer.

:class:`SentinelTransport` is the same channel on a Sentinel group's master (kombu's
``SentinelChannel`` finds the master; ``sentinel://`` brokers).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from queue import Empty
from time import monotonic
from typing import Any, Protocol

import redis
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from jobqueue.shared.routing import BROKER_MAX_PRIORITY
from jobqueue.transport.early_ack import QoS
from jobqueue.transport.kombu_loop import lean_poll_start
from jobqueue.transport.replication import wait_after
from jobqueue.transport.ride_batch import EarlyWrite, send_batch
from jobqueue.transport.riders import held_rider, rider_for, same_target

#: Attribute of a kombu Connection where its channels find the poison hook.
HOOK_ATTR = "jobqueue_on_poison"
#: Attribute of a kombu Connection where its channels find the fair-share order.
FAIR_ATTR = "jobqueue_fair_order"


class FairOrderHook(Protocol):
    """The order a channel asks for its queues in (:class:`jobqueue.shared.fairshare.FairOrder`)."""

    def order(self, queues: Iterable[str]) -> list[str]:
        """The queues to ask the broker for, in this order (at each priority level)."""

    def delivered(self, queue: str) -> None:
        """A message came from ``queue``."""


def set_fair_order(connection: Any, hook: FairOrderHook | None) -> None:
    """Have the channels of kombu ``connection`` fetch their queues in ``hook``'s order."""
    setattr(connection, FAIR_ATTR, hook)


class PoisonHook(Protocol):
    """What the channel's BRPOP reader asks about each item it pops (the worker's rules)."""

    def check(self, item: bytes | str, decode_body: Callable[[Any, Any], Any]) -> tuple[Any, str | None]:
        """``(payload, None)`` when ``item`` can be delivered, else ``(payload or None, reason)``."""

    def discard(self, queue: str, item: bytes | str, payload: Any, reason: str,
                redis_client: Callable[[], AbstractContextManager[Any]]) -> None:
        """Deal with an item that cannot be delivered (``redis_client()``: a pooled client)."""


def set_poison_hook(connection: Any, hook: PoisonHook | None) -> None:
    """Have the channels of kombu ``connection`` ask ``hook`` about every item they pop."""
    setattr(connection, HOOK_ATTR, hook)


def brpop_expected(channel: Any) -> bool:
    """Whether ``channel`` (a consumer's channel on this transport) should be waiting for a BRPOP
    reply now: it consumes queues and may take a message (a worker busy with its one job has
    no BRPOP out). PRIVATE TOUCHPOINT 7."""
    qos = getattr(channel, "qos", None)
    return bool(getattr(channel, "active_queues", None)) and qos is not None and bool(qos.can_consume())


def last_brpop_reply(channel: Any) -> float | None:
    """When (monotonic) ``channel``'s BRPOP last got a reply from Redis -- a message, or the
    server's empty answer when its ``brpop_timeout`` ran out -- or None if it never did."""
    value = getattr(channel, LAST_REPLY_ATTR, None)
    return float(value) if value is not None else None


def sever(connection: Any) -> int:
    """Shut down, both ways, every socket of kombu ``connection``'s Redis channels: their pools'
    connections (idle or in use, the BRPOP one included) and their pub/sub clients'. Safe from
    any thread: only the sockets are touched, so a thread blocked reading one gets an error at
    once, and kombu and redis-py then drop each as after any lost connection (in their own
    thread). Returns how many sockets were shut. PRIVATE TOUCHPOINT 8."""
    sockets: list[Any] = []
    transport = getattr(connection, "transport", None)
    for channel in list(getattr(transport, "channels", None) or ()):
        state = vars(channel)
        for pool in (state.get("_pool"), state.get("_async_pool")):
            conns = [*(getattr(pool, "_available_connections", None) or ()),
                     *(getattr(pool, "_in_use_connections", None) or ())]
            sockets.extend(getattr(conn, "_sock", None) for conn in conns)
        subclient = state.get("subclient")
        sockets.append(getattr(getattr(subclient, "connection", None), "_sock", None))
    shut = 0
    for sock in sockets:
        if sock is None:
            continue
        try:
            sock.shutdown(socket.SHUT_RDWR)
            shut += 1
        except OSError:  # closed already
            pass
    return shut


def sever_pool(pool: Any) -> int:
    """:func:`sever` every connection of kombu connection ``pool`` (Celery's ``app.pool``, which
    a worker's control replies are published through), idle or in use; placeholders for
    connections never made are skipped. PRIVATE TOUCHPOINT 8 (``Resource._dirty`` and
    ``_resource.queue``)."""
    held = [*(getattr(pool, "_dirty", None) or ()), *(getattr(getattr(pool, "_resource", None), "queue", None) or ())]
    return sum(sever(conn) for conn in held if hasattr(conn, "transport") and getattr(conn, "_transport", None))


def stale_link(message: str) -> Exception:
    """An error this transport counts as a lost connection (Celery's consumer reconnects on it)."""
    return redis.exceptions.ConnectionError(message)


#: Attribute of a :class:`Channel` holding when its BRPOP last got a reply (monotonic).
LAST_REPLY_ATTR = "jobqueue_last_reply"


class _ClientCache:
    """One ``redis.Redis`` per connection pool, rebuilt when the pool changes."""

    def __init__(self) -> None:
        self.client: Any = None

    def get(self, pool: Any, build: Callable[[], Any]) -> Any:
        client = self.client
        if client is None or client.connection_pool is not pool:
            client = self.client = build()
        return client


log = logging.getLogger(__name__)

#: Seconds a popped message whose delivery failed is offered back to the broker.
GIVE_BACK_PATIENCE = 120.0
#: Seconds between two tries.
GIVE_BACK_INTERVAL = 0.5

#: BRPOP commands (queue orders) a channel keeps packed.
BRPOP_CACHE = 64

#: Transport options of :class:`Channel` beyond kombu's (set from Settings by ``create_app``).
WAIT_OPTIONS = ("jobqueue_wait_replicas", "jobqueue_wait_timeout")


class _Commands:
    """Stands in for kombu's publish batch: collects the commands ``_put`` would send."""

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def add(self, *command: Any) -> None:
        self.commands.append(command)


#: The routing key of Celery's ``task-sent`` event (its type, dashes as dots).
TASK_SENT_KEY = "task.sent"

#: Whether kombu's ``Channel._put`` takes a ``_publish_batch`` (kombu 5.7+; PRIVATE TOUCHPOINT 5).
KOMBU_BATCHES = "_publish_batch" in kombu_redis.Channel._put.__code__.co_consts


class Channel(kombu_redis.Channel):
    """Redis channel that keeps priorities up to :data:`BROKER_MAX_PRIORITY` and never
    delivers (nor dies on) an item its connection's poison hook refuses: the hook gets it."""

    max_priority = BROKER_MAX_PRIORITY  # PRIVATE TOUCHPOINT 1
    QoS = QoS  # acks that rode with a job's SUCCESS are not sent again (jobqueue.transport.early_ack)
    from_transport_options = (*kombu_redis.Channel.from_transport_options, *WAIT_OPTIONS)  # type: ignore[assignment]
    #: Replicas each queued message must reach before ``_put`` returns (0: no ``WAIT``).
    jobqueue_wait_replicas = 0
    #: Seconds ``WAIT`` may take (then :class:`~jobqueue.errors.NotReplicated`).
    jobqueue_wait_timeout = 2.0

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:  # PRIVATE TOUCHPOINT 5
        job_id = (message.get("headers") or {}).get("id")
        rider = rider_for(job_id)
        replicas = int(self.jobqueue_wait_replicas or 0)
        if kwargs.get("_publish_batch") is not None or not KOMBU_BATCHES or (not replicas and rider is None):
            if rider is not None:  # no batch of ours to ride in: the record first, on its own
                rider.run_alone()
            super()._put(queue, message, **kwargs)  # type: ignore[no-untyped-call]
            if replicas and kwargs.get("_publish_batch") is None:  # a kombu without batches
                with self.conn_or_acquire() as client:  # WAIT behind a fence
                    wait_after(client, replicas, float(self.jobqueue_wait_timeout),
                               f"the message of job {job_id}", job_id)
            return
        # kombu's own commands for this message (its key, priority list and expiry), collected
        # and sent in one pipeline on one connection (after the rider's commands, in one
        # MULTI, when they share the server), WAIT last: it covers exactly them.
        batch = _Commands()
        super()._put(queue, message, _publish_batch=batch, **kwargs)  # type: ignore[no-untyped-call]
        with self.conn_or_acquire() as client:
            if rider is not None and (getattr(self, "global_keyprefix", None) or not same_target(rider.client, client)):
                rider.run_alone()  # another server, database or key space: its own round trip first
                rider = None
            if rider is not None and rider.hold_for_event and not replicas:
                # Written now, its replies read when the job's task-sent event (next on this
                # channel, _put_fanout) follows it on the same connection: one wait.
                early = EarlyWrite(client, batch.commands, rider, float(self.jobqueue_wait_timeout), job_id)
                early.send()
                rider.held = early.finish
                return
            send_batch(client, batch.commands, rider, replicas, float(self.jobqueue_wait_timeout), job_id)

    def _put_fanout(self, exchange: str, message: Any, routing_key: str, **kwargs: Any) -> None:  # TOUCHPOINT 5
        rider = held_rider()
        if rider is None or routing_key != TASK_SENT_KEY or kwargs.get("_publish_batch") is not None:
            super()._put_fanout(exchange, message, routing_key, **kwargs)  # type: ignore[no-untyped-call]
            return
        batch = _Commands()  # the event's PUBLISH, inside the held message's transaction
        super()._put_fanout(exchange, message, routing_key, _publish_batch=batch, **kwargs)  # type: ignore[no-untyped-call]
        try:
            rider.send_held(batch.commands)
        except tuple(self.connection.connection_errors):
            raise  # kombu retries the event's publish, and the held message with it
        except Exception:  # refused: Celery would keep the event for later; the message stays
            log.debug("job %s: its message and event were refused", rider.job_id, exc_info=True)

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

    def _brpop_start(self, timeout: Any = None) -> None:  # PRIVATE TOUCHPOINT 7
        self_: Any = self
        fair: FairOrderHook | None = getattr(self_.connection.client, FAIR_ATTR, None)
        if fair is None:
            super()._brpop_start(timeout)  # type: ignore[no-untyped-call]
            return
        if timeout is None:
            timeout = self_.brpop_timeout
        queues = fair.order(self_._queue_cycle.consume(len(self_.active_queues)))
        if not queues:
            return
        connection = self_.client.connection
        cache: dict[tuple[Any, ...], Any] = vars(self_).setdefault("jobqueue_brpops", {})
        packed = cache.get((*queues, timeout or 0))
        if packed is None:  # the same queues in the same order: the same command, packed once
            # Priority first (every queue's level n before any queue's level n + 1), as kombu.
            keys = [self_._q_for_pri(queue, pri) for pri in self_.priority_steps for queue in queues]
            command_args = ["BRPOP", *keys, timeout or 0]
            if self_.global_keyprefix:
                command_args = self_.client._prefix_args(command_args)
            if len(cache) >= BRPOP_CACHE:
                cache.clear()
            packed = cache[(*queues, timeout or 0)] = connection.pack_command(*command_args)
        self_._in_poll = connection
        self_._brpop_sent_at = time.monotonic()
        connection.send_packed_command(packed)

    def _brpop_read(self, **options: Any) -> bool:  # PRIVATE TOUCHPOINT 2
        self_: Any = self
        hook: PoisonHook | None = getattr(self_.connection.client, HOOK_ATTR, None)
        refused: tuple[str, Any, Any, str] | None = None
        try:
            try:
                dest__item = self_.client.parse_response(self_.client.connection, "BRPOP", **options)
            except self_.connection_errors:
                # A connection error: disconnect so the next iteration reconnects (as kombu does).
                self_.client.connection.disconnect()
                raise
            setattr(self_, LAST_REPLY_ATTR, monotonic())  # Redis answered: the link is alive
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = (dest.decode() if isinstance(dest, bytes) else dest).rsplit(self_.sep, 1)[0]
            self_._queue_cycle.rotate(dest)
            fair: FairOrderHook | None = getattr(self_.connection.client, FAIR_ATTR, None)
            if fair is not None:
                fair.delivered(dest)
            if hook is None:  # kombu's own delivery
                self._deliver_or_give_back(loads(bytes_to_str(item)), dest, item)  # type: ignore[no-untyped-call]
                return True
            payload, reason = hook.check(item, self_.decode_body)  # PRIVATE TOUCHPOINT 3
            if reason is None:
                self._deliver_or_give_back(payload, dest, item)
                return True
            refused = (dest, item, payload, reason)
        finally:
            self_._in_poll = None
            flush = getattr(self_, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()
        assert hook is not None and refused is not None
        hook.discard(*refused, self.conn_or_acquire)
        return True

    def _deliver_or_give_back(self, payload: Any, dest: str, item: bytes | str) -> None:
        """Deliver a popped item; when the broker went away before kombu recorded it as
        unacked (its QoS write failed), nobody else holds it: a thread puts it back at the head
        of its queue once the broker answers again (the promoted replica, on Sentinel)."""
        self_: Any = self
        try:
            self_.connection._deliver(payload, dest)
        except self_.connection_errors:
            tag = ((payload or {}).get("properties") or {}).get("delivery_tag") if isinstance(payload, dict) else None
            if tag is None or tag not in self_.qos._delivered:  # kombu's QoS never recorded it
                threading.Thread(target=self._give_back, args=(dest, item), daemon=True,
                                 name="jobqueue-give-back").start()
            raise

    def _give_back(self, dest: str, item: bytes | str, patience: float = GIVE_BACK_PATIENCE) -> bool:
        """RPUSH ``item`` back onto ``dest``'s list of its priority, trying for ``patience`` s."""
        self_: Any = self
        message = loads(bytes_to_str(item))  # type: ignore[no-untyped-call]
        key = self_._q_for_pri(dest, self_._get_message_priority(message, reverse=False))
        deadline = time.monotonic() + patience
        while True:
            try:
                with self.conn_or_acquire() as client:
                    client.rpush(key, item)
            except Exception as exc:
                if time.monotonic() >= deadline:
                    log.error("a message popped from %s just before the broker went away is lost: %s (%r)",
                              dest, exc, str(item)[:300])
                    return False
                time.sleep(GIVE_BACK_INTERVAL)  # the broker is away: try again shortly
                continue
            log.warning("a message popped from %s just before the broker went away was put back", dest)
            return True


class Transport(kombu_redis.Transport):
    """Redis transport using :class:`Channel`, whose event loop skips re-adding readers it has."""

    Channel = Channel

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:  # PRIVATE TOUCHPOINT 10
        lean_poll_start(self, lambda: super(Transport, self).register_with_event_loop(  # type: ignore[no-untyped-call]
            connection, loop), loop)


class SentinelChannel(kombu_redis.SentinelChannel, Channel):
    """:class:`Channel` on the master of a Sentinel group: kombu's Sentinel channel finds the
    master (and finds it again after a failover); everything else is :class:`Channel`'s."""

    from_transport_options = (*kombu_redis.SentinelChannel.from_transport_options,  # type: ignore[assignment]
                              *WAIT_OPTIONS)


class SentinelTransport(kombu_redis.SentinelTransport):
    """Redis Sentinel transport using :class:`SentinelChannel`."""

    Channel = SentinelChannel

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:  # PRIVATE TOUCHPOINT 10
        lean_poll_start(self, lambda: super(SentinelTransport, self).register_with_event_loop(  # type: ignore[no-untyped-call]
            connection, loop), loop)


def can_ride(app: Any) -> bool:
    """Whether ``app``'s broker is this module's transport, whose publish runs riders
    (:mod:`jobqueue.transport.riders`)."""
    return getattr(app.conf, "broker_transport", None) in (TRANSPORT_PATH, SENTINEL_TRANSPORT_PATH)


#: Value for Celery's ``broker_transport`` setting.
TRANSPORT_PATH = f"{__name__}:Transport"
#: ``broker_transport`` when the broker is a Sentinel group (``sentinel://``).
SENTINEL_TRANSPORT_PATH = f"{__name__}:SentinelTransport"
