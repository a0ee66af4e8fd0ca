"""RabbitMQ queues that survive a node: quorum queues, dead letters, and a clear error when a
queue already exists with the other type.

With ``JOBQUEUE_RABBITMQ_QUEUE_TYPE=quorum`` every queue jobqueue creates (a service, GPU,
machine or worker queue: Celery's "missing" queues) is declared ``x-queue-type=quorum``
(replicated on the cluster's nodes, Raft: a message confirmed to the publisher is on a majority
of them), with ``x-delivery-limit`` (a message returned that many times without an ack -- its
worker crashed each time, a node with its consumer died, or a worker handed it back with a
requeue -- stops coming back) and a dead-letter
exchange, :data:`DEAD_LETTER_EXCHANGE`, that routes such a message, and every message a worker
rejects as poison, to the quorum queue ``<queue>.dead`` (the name dead letters have on Redis
too). Declaring the queue declares ``<queue>.dead`` and its binding
(:class:`DeadLetteredQueue`), so a dead letter always has somewhere to go.

RabbitMQ 3.x quorum queues have no priorities (``x-max-priority`` is refused; 4.0 adds two
levels, ``normal`` and ``high``): on quorum queues jobs are served in the order they were sent.

A queue's type is fixed when it is created: declaring ``gpu0`` as quorum over an existing
classic ``gpu0`` (or the reverse) is refused by RabbitMQ with ``PRECONDITION_FAILED -
inequivalent arg 'x-queue-type'``; :func:`explain_declare_error` turns that into
:class:`~jobqueue.errors.QueueTypeMismatch`, which names the queue and how to migrate.
"""

from __future__ import annotations

import re
from typing import Any

from celery.app.amqp import AMQP, Queues
from kombu.entity import Exchange, Queue

from jobqueue.errors import QueueTypeMismatch

#: The exchange dead letters go through (direct; routing key ``<queue>.dead``).
DEAD_LETTER_EXCHANGE = "jobqueue.dead"
#: RabbitMQ's refusal of a redeclaration with another queue type.
_MISMATCH = re.compile(r"inequivalent arg '(x-queue-type|x-max-priority|x-dead-letter-exchange|x-delivery-limit)'"
                       r" for queue '([^']*)' in vhost '([^']*)': received (.*) but current is (.*)")


def dead_queue_name(queue: str) -> str:
    """Where ``queue``'s dead letters go (the same name as the Redis dead-letter list)."""
    return f"{queue}.dead"


def quorum_arguments(queue: str, delivery_limit: int) -> dict[str, Any]:
    """The arguments of a quorum queue jobqueue declares: type, delivery limit, dead letters."""
    return {"x-queue-type": "quorum", "x-delivery-limit": delivery_limit,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE, "x-dead-letter-routing-key": dead_queue_name(queue)}


class DeadLetteredQueue(Queue):
    """A queue whose declaration also declares :data:`DEAD_LETTER_EXCHANGE` and its
    ``<queue>.dead`` (a quorum queue bound with that routing key): whoever declares the queue
    -- a client before its first submit, a worker before it consumes, a consumer added later --
    makes sure its dead letters have somewhere to go."""

    def declare(self, nowait: bool = False, channel: Any = None) -> Any:
        name = super().declare(nowait=nowait, channel=channel)  # type: ignore[no-untyped-call]
        channel = channel or self.channel
        exchange = Exchange(DEAD_LETTER_EXCHANGE, "direct", durable=True)  # type: ignore[no-untyped-call]
        dead = dead_queue_name(self.name)
        Queue(dead, exchange, routing_key=dead, durable=True,  # type: ignore[no-untyped-call]
              queue_arguments={"x-queue-type": "quorum"}).declare(nowait=nowait, channel=channel)
        return name


class JobqueueQueues(Queues):  # type: ignore[misc]  # Celery is untyped
    """Celery's queue map; a queue it creates on demand is a :class:`DeadLetteredQueue` with
    :func:`quorum_arguments` when the app's settings ask for quorum queues."""

    #: Deliveries before a dead letter; None: classic queues (Celery's own arguments).
    delivery_limit: int | None = None

    def new_missing(self, name: str) -> Any:
        queue: Any = super().new_missing(name)
        if self.delivery_limit is None or name.endswith(".dead"):
            return queue
        arguments = {**(queue.queue_arguments or {}), **quorum_arguments(name, self.delivery_limit)}
        return DeadLetteredQueue(name, queue.exchange, queue.routing_key,  # type: ignore[no-untyped-call]
                                 queue_arguments=arguments)


class JobqueueAMQP(AMQP):  # type: ignore[misc]  # Celery is untyped
    """Celery's ``app.amqp`` with :class:`JobqueueQueues` (named by ``JobqueueCelery.amqp_cls``)."""

    queues_cls = JobqueueQueues

    def Queues(self, queues: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N802 - Celery's name
        made = super().Queues(queues, *args, **kwargs)
        settings = getattr(self.app, "settings", None)
        if settings is not None and not settings.is_redis and settings.rabbitmq_queue_type == "quorum":
            made.delivery_limit = settings.rabbitmq_delivery_limit
        return made


def declare_queues(channel: Any, queues: list[Queue]) -> None:
    """Declare ``queues`` (a worker's, before it consumes them; a quorum queue's dead letters
    with it); raises :class:`QueueTypeMismatch` when one exists with another type."""
    for queue in queues:
        try:
            queue.bind(channel).declare()  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise explain_declare_error(exc) from exc


def explain_declare_error(exc: BaseException) -> BaseException:
    """A :class:`QueueTypeMismatch` naming the queue and the way out when ``exc`` is RabbitMQ
    refusing a queue's redeclaration with other arguments; else ``exc`` itself."""
    match = _MISMATCH.search(str(exc))
    if match is None:
        return exc
    arg, queue, vhost, received, current = match.groups()
    # jobqueue declares two shapes only: classic with x-max-priority, quorum with the others.
    quorum = (received == "none") if arg == "x-max-priority" else (received != "none" and "classic" not in received)
    want, have = ("quorum", "classic") if quorum else ("classic", "quorum")
    return QueueTypeMismatch(
        f"RabbitMQ queue {queue!r} (vhost {vhost!r}) exists as a {have} queue and jobqueue declares it as a {want} "
        f"queue (JOBQUEUE_RABBITMQ_QUEUE_TYPE={want}); RabbitMQ refused the redeclaration ({arg}: received {received}, "
        f"current {current}): a queue's type is fixed when it is created. To migrate, stop submitting to {queue!r} "
        f"with the old type, let its workers empty it (or move its messages with a shovel), delete it "
        f"(rabbitmqctl delete_queue -p {vhost} {queue}), then start clients and workers with "
        f"JOBQUEUE_RABBITMQ_QUEUE_TYPE={want} (docs/deployment.md, 'RabbitMQ cluster'); or set it back to {have}.")


def raise_clearly(exc: BaseException) -> None:
    """Raise :func:`explain_declare_error`'s error for ``exc`` when it is a clearer one."""
    clear = explain_declare_error(exc)
    if clear is not exc:
        raise clear from exc
