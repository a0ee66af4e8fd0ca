"""Writes that ride with a job's message: its submit record and the ``LPUSH`` in one round trip.

A client writes a job's submit record (and its first facts, its place in the queued index,
...) into the result backend *before* it sends the message, so a worker can never take a job
whose record is missing. On this VM each socket round trip costs about a millisecond of CPU
under load, so that record used to be the one round trip a submit made beyond plain Celery's
``send_task``. When the broker and the result backend are the same Redis server and database,
the record and the message can share it: the client hands the record's commands to the
broker's channel as a :class:`Rider` (:func:`riding`, around ``send_task``), and the channel's
``_put`` (:mod:`jobqueue.transport.kombu_redis`) sends them with the message in one
``MULTI``/``EXEC``, the record's commands first: Redis runs the transaction at once and whole,
so the record is there no later than the message, and neither is there when the transaction is
refused. A Redis ``WAIT`` for replicas (Sentinel) follows the ``EXEC`` in the same round trip
and covers both.

When the two differ (another Redis server or database, a broker key prefix, a kombu without
publish batches) the channel runs the rider's commands on the result backend first, in their own
round trip, then sends the message as before. Without replicas to wait for, the transaction is
written at once but its replies are held for the job's ``task-sent`` event, which Celery
publishes right after it on the same channel: the event's ``PUBLISH`` follows on the same
connection (published only if the job's record is in Redis: :attr:`Rider.guard`) and the replies
of both are read together, so a submit waits for Redis once less than plain Celery's
``send_task``, and the worker gets the message before the event is built
(:class:`~jobqueue.transport.ride_batch.EarlyWrite`; the replies of a message whose event never
came are read when ``send_task`` returns). A broker this package's transport does not serve
(RabbitMQ) never sees a rider: :func:`jobqueue.transport.kombu_redis.can_ride` says so and the
client writes the record itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Rider:
    """Commands that must reach the result backend no later than the message of ``job_id``."""

    #: The id of the message they ride with (for a batch or a workflow: its first message).
    job_id: str
    #: The result backend's Redis client: where the commands belong.
    client: Any
    #: Queues the commands on a pipeline (a pipeline of either client: same server and database).
    add: Callable[[Any], None]
    #: Raises when the replies show the record was not written (then, on its own round trip,
    #: the message is not sent); given the commands' replies in order.
    check: Callable[[list[Any]], None]
    #: Waits for the replicas to hold the commands when they ran on their own (may raise
    #: :class:`~jobqueue.errors.NotReplicated`, before the message is sent).
    replicate: Callable[[], None] | None = None
    #: The commands' replies once they ran (the last try's, when the publish was retried).
    replies: list[Any] | None = None
    #: True when they went in the message's transaction, False when on a round trip of their own.
    with_message: bool = False
    #: Celery publishes the job's ``task-sent`` event right after its message: the channel may
    #: then hold the message's write (:attr:`held`) for the event's ``PUBLISH`` to join it.
    hold_for_event: bool = False
    #: The message's held write, ``send(extra commands)``, until the event joins it (or
    #: :meth:`flush` sends it alone); on this package's transport the transaction is already
    #: written and this reads its replies (:class:`~jobqueue.transport.ride_batch.EarlyWrite`).
    held: Callable[[list[tuple[Any, ...]]], None] | None = None
    #: A key the commands write (the job's submit record): the event that follows the message
    #: is published only when it is in Redis (a refused transaction publishes none).
    guard: str | None = None
    #: What waits for the message to be written (the subscription to its result):
    #: :meth:`run_later` runs it once the publish returned.
    later: list[Callable[[], None]] = field(default_factory=list)

    def send_held(self, extra: list[tuple[Any, ...]]) -> None:
        """Send the held message with ``extra`` commands (the event's) in its round trip; on
        failure it stays held (a retried publish, or :meth:`flush`, sends it again)."""
        if self.held is not None:
            self.held(extra)
            self.held = None

    def flush(self) -> None:
        """Send a message still held (its event never came, or failed and was buffered by
        Celery): alone, raising what the send raises."""
        held, self.held = self.held, None
        if held is not None:
            held([])

    def run_later(self) -> None:
        """Run what waited for the message (in order, once)."""
        later, self.later = self.later, []
        for call in later:
            call()

    def abandon(self) -> None:
        """The publish failed after the message was held: the message is written already and
        in Redis all the same; its replies are read, its connection freed (errors only logged)."""
        held, self.held = self.held, None
        if held is not None:
            try:
                held([])
            except Exception:
                log.warning("job %s: the replies of its message's write could not be read", self.job_id, exc_info=True)

    def run_alone(self) -> None:
        """Send the commands on the result backend's own client (one round trip), check them,
        then wait for the replicas: what a submit did before riders."""
        with self.client.pipeline(transaction=False) as pipe:
            self.add(pipe)
            self.replies = pipe.execute(raise_on_error=False)
        self.with_message = False
        self.check(self.replies)
        if self.replicate is not None:
            self.replicate()


_current: ContextVar[Rider | None] = ContextVar("jobqueue_rider", default=None)


@contextmanager
def riding(rider: Rider) -> Iterator[Rider]:
    """While inside, the publish of the message of ``rider.job_id`` (in this thread or task)
    carries ``rider``'s commands."""
    token = _current.set(rider)
    try:
        yield rider
    finally:
        _current.reset(token)


def rider_for(job_id: Any) -> Rider | None:
    """The rider waiting for the message of ``job_id``, if any."""
    rider = _current.get()
    return rider if rider is not None and job_id is not None and rider.job_id == job_id else None


def held_rider() -> Rider | None:
    """The rider whose message is held for its ``task-sent`` event, if any."""
    rider = _current.get()
    return rider if rider is not None and rider.held is not None else None


def redis_target(client: Any) -> tuple[Any, ...]:
    """What a redis-py ``client`` connects to: server (or Sentinel group and master name),
    database and credentials. Two clients with the same target see the same keys."""
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    service = getattr(pool, "service_name", None)
    if service is not None:  # a Sentinel-managed master
        sentinels = getattr(getattr(pool, "sentinel_manager", None), "sentinels", None) or ()
        where: tuple[Any, ...] = ("sentinel", service, tuple(sorted(
            (str(s.connection_pool.connection_kwargs.get("host")), s.connection_pool.connection_kwargs.get("port"))
            for s in sentinels)))
    else:
        where = (pool.connection_class.__name__, kwargs.get("host"), kwargs.get("port"), kwargs.get("path"))
    return (*where, int(kwargs.get("db") or 0), kwargs.get("username"), kwargs.get("password"))


def same_target(one: Any, other: Any) -> bool:
    """Whether redis-py clients ``one`` and ``other`` reach the same server and database."""
    return one is other or redis_target(one) == redis_target(other)
