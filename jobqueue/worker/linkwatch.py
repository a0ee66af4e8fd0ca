"""A frozen broker link is noticed: the consumer's watchdog (Redis).

A broker connection that stops answering without closing (a NAT or firewall entry dropped, a
proxy that stops forwarding: no FIN, no RST, the kernel still ACKs) looks healthy to the
worker. TCP keepalive does not help (the path still ACKs), synchronous commands only fail
when one is sent, and kombu's own check of its BRPOP connection (``health_check_interval``)
runs in the event loop, which kombu's restore sweep and binding refresh hold for a whole socket
timeout on each dead pooled connection (seen through a proxy that stops forwarding: 6 to 11 s
to notice with a 1 s interval, and an earlier run where the worker never came back).

An idle worker's BRPOP is answered by Redis at least every ``brpop_timeout`` (1 s): a message,
or the empty answer when the server-side timeout runs out. The transport stamps every answer
(:func:`jobqueue.transport.kombu_redis.last_brpop_reply`). :class:`LinkWatchStep`, a consumer
step, looks every ``redis_health_interval / 4`` s from the consumer's own event loop: when a
BRPOP is due (the consumer takes messages and holds none,
:func:`~jobqueue.transport.kombu_redis.brpop_expected`) and Redis has not answered one for
``2 × redis_health_interval`` s, it raises a connection error in the event loop, and Celery's
consumer reconnects as after any lost connection (a new broker connection, pidbox and event
dispatcher included). The event loop may be stuck meanwhile in a command on a dead socket (kombu's
restore sweep, a heartbeat) for a whole socket timeout, so a thread of the step looks too, and
shuts every socket of the consumer's, its event dispatcher's and the app's producer pool's
connections (:func:`~jobqueue.transport.kombu_redis.sever`; control replies leave through that
pool, from the loop): the stuck command fails at once, the BRPOP
socket reads its end, and the consumer reconnects. A frozen link is so noticed within
``2.25 × JOBQUEUE_REDIS_HEALTH_INTERVAL`` s (about 22 s by default), and the worker consumes
again a moment later. One thing it cannot save: a message Redis popped for the BRPOP in flight
when the link froze (its reply never arrives; docs/deployment.md, "A frozen broker link").

The watch never fires while the worker holds a message (a running job: no BRPOP is due), so it
never drops a running job's delivery. A job running through a frozen link is covered by what
has its own connection or its own timeout: the lease keeper renews through a fresh connection
(short socket timeout), so the job is never handed out twice; the job's end (ack, result,
events) fails on the dead socket after its socket timeout and Celery reconnects then; the ack
goes through the new connection's pool. On RabbitMQ, AMQP heartbeats notice a frozen link
(``JOBQUEUE_BROKER_HEARTBEAT``) and this step only bounds, on both brokers, the close of the old
event dispatcher's connection when the consumer reconnects: through a frozen link an AMQP channel
close waits for its reply forever, and the worker never came back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import bootsteps
from celery.utils.threads import bound_open_broker_sockets

from jobqueue.transport.kombu_redis import brpop_expected, last_brpop_reply, sever, sever_pool, stale_link
from jobqueue.worker.loop import IntervalLoop

log = logging.getLogger(__name__)

#: The watch looks this many times per health interval.
CHECKS_PER_INTERVAL = 4
#: A due BRPOP unanswered for this many health intervals means the link is frozen.
SILENT_INTERVALS = 2.0
#: Longest (s) the close of an old event dispatcher connection may wait for the broker.
CLOSE_TIMEOUT = 1.0


class SilenceWatch:
    """How long a due BRPOP has gone unanswered, counted only while one is due."""

    def __init__(self, bound: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.bound = bound
        self.clock = clock
        self._due_since: float | None = None

    def silence(self, due: bool, last_reply: float | None) -> float:
        """Seconds without an answer while one was due (0 when none is due)."""
        now = self.clock()
        if not due:
            self._due_since = None
            return 0.0
        if self._due_since is None:
            self._due_since = now
        heard = self._due_since if last_reply is None else max(self._due_since, last_reply)
        return now - heard

    def frozen(self, due: bool, last_reply: float | None) -> float | None:
        """The silence when it is longer than the bound (the link is frozen), else None."""
        silence = self.silence(due, last_reply)
        if silence > self.bound:
            self._due_since = None  # the next connection starts its own count
            return silence
        return None


def _consuming(c: Any) -> bool:
    """True once every step of the consumer started, the event loop last (Celery's
    ``Blueprint.started`` counts them): the consumer is connected and polling, even if a command
    on a dead socket holds its loop now."""
    blueprint = getattr(c, "blueprint", None)
    steps: list[Any] = list(getattr(c, "steps", None) or ())
    return blueprint is not None and bool(steps) and int(getattr(blueprint, "started", 0)) >= len(steps)


class LinkWatchStep(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery is untyped
    """Reconnect the consumer when its Redis BRPOP goes unanswered too long (see the module doc)."""

    label = "jobqueue link watch"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self._tref: Any = None
        self._thread: IntervalLoop | None = None
        self.watch: SilenceWatch | None = None
        #: Set by the first look from the event loop: the consumer is up and polling.
        self._looping = False

    def start(self, c: Any) -> None:
        if not c.app.settings.is_redis or getattr(c, "hub", None) is None:
            return  # RabbitMQ: AMQP heartbeats notice a frozen link
        interval = float(c.app.settings.redis_health_interval)
        period = max(0.25, interval / CHECKS_PER_INTERVAL)
        self.watch = SilenceWatch(SILENT_INTERVALS * interval)
        self._looping = False
        self._tref = c.hub.call_repeatedly(period, self.check, c)
        # The same look from a thread of its own: the event loop may be stuck in a command on a
        # dead socket for a whole socket timeout, and then cannot look at all.
        watchdog = SilenceWatch(SILENT_INTERVALS * interval)
        severed: list[Any] = []

        def look() -> None:
            connection = c.connection
            if not (self._looping or _consuming(c)):  # still connecting: steps block on their own timeouts
                return
            silence = self._silence(c, watchdog)
            if silence is None or connection is None or connection in severed:
                return
            severed[:] = [connection]  # once per connection
            shut = sever(connection)
            dispatcher = getattr(c, "event_dispatcher", None)
            shut += sever(getattr(dispatcher, "connection", None))
            shut += sever_pool(c.app.pool)  # control replies leave through it, from the loop
            log.warning("broker link silent: no answer to BRPOP for %.1f s; shut its %d sockets", silence, shut)

        self._thread = IntervalLoop(look, interval=period, name="jobqueue-link-watch").start()

    @staticmethod
    def _silence(c: Any, watch: SilenceWatch) -> float | None:
        consumer = getattr(c, "task_consumer", None)
        channel = getattr(consumer, "channel", None)
        if channel is None:
            return None
        return watch.frozen(brpop_expected(channel), last_brpop_reply(channel))

    def check(self, c: Any) -> None:
        """One look, in the consumer's event loop; raises the transport's connection error (the
        consumer reconnects) when the link is frozen."""
        self._looping = True
        silence = None if self.watch is None else self._silence(c, self.watch)
        if silence is not None:
            log.warning("broker link silent: no answer to BRPOP for %.1f s; reconnecting", silence)
            raise stale_link(f"broker link silent for {silence:.1f} s (no answer to BRPOP)")

    def stop(self, c: Any) -> None:
        # Before the consumer reconnects (or shuts down), its Events step closes the old event
        # dispatcher's connection: through a frozen link that close would wait for a reply
        # forever (an AMQP channel close does). Celery bounds the consumer's own sockets then,
        # not the dispatcher's: bound them here.
        dispatcher = getattr(c, "event_dispatcher", None)
        if dispatcher is not None and getattr(dispatcher, "connection", None) is not None:
            bound_open_broker_sockets(dispatcher.connection, CLOSE_TIMEOUT)
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None
        if self._thread is not None:
            self._thread.stop()
            self._thread = None

    def shutdown(self, c: Any) -> None:
        self.stop(c)
