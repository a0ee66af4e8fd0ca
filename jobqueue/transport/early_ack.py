"""A job's message acked in the transaction that stores its ``SUCCESS``: one round trip fewer.

With acks late, Celery stores a job's ``SUCCESS`` (one transaction: the guarded write of
:mod:`jobqueue.transport.internals` and what rides with it) and then acks its message, which
kombu's Redis transport emulates with a second transaction (``MULTI ZREM HDEL EXEC``: the
delivery tag leaves the unacked index and hash). Here the two removals run inside the guarded
write's script, after the record is stored (or a ``SUCCESS`` found kept): both or neither --
a write Redis refuses (out of memory) raises before the removals, and a worker killed before
the transaction leaves the message to the restore sweep as before. Once the transaction ran,
the channel's :class:`QoS` only does kombu's bookkeeping for the tag when Celery acks it (or
rejects it: its job is complete, nothing is requeued).

:func:`early_ack` finds what to remove: the one request this worker runs for the job
(Celery's ``active_requests``), acks late, not acked nor forgotten, whose message came through
a channel with :class:`QoS` on the result backend's server and database. Otherwise (another
broker, a stray copy held twice, a request marked acked) nothing rides and kombu acks as it does.

PRIVATE TOUCHPOINTS (Celery 5.4-5.7, kombu 5.4-5.7; checked by
tests/jobqueue/transport/test_early_ack.py): ``Request.message``, ``task``, ``acknowledged``;
a kombu Redis channel's ``_qos``, ``client``, ``unacked_key``, ``unacked_index_key``,
``global_keyprefix``; ``kombu.transport.redis.QoS.ack``/``reject`` and
``virtual.QoS.ack`` (the bookkeeping without the Redis write), ``QoS._delivered``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from jobqueue.transport.internals import active_requests
from jobqueue.transport.riders import same_target


class QoS(kombu_redis.QoS):
    """kombu's Redis ack emulation, sending nothing for a tag acked with its job's ``SUCCESS``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        #: Delivery tags removed from the unacked index and hash with their job's SUCCESS.
        self.acked_early: set[Any] = set()

    def ack(self, delivery_tag: Any) -> None:
        if delivery_tag in self.acked_early:
            self.acked_early.discard(delivery_tag)
            virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]  # kombu's bookkeeping only
            return
        super().ack(delivery_tag)  # type: ignore[no-untyped-call]

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if delivery_tag in self.acked_early:  # its job is complete: never requeued
            self.acked_early.discard(delivery_tag)
            virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
            return
        super().reject(delivery_tag, requeue=requeue)  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class EarlyAck:
    """The removals that ack one message (keys as the result backend's client names them)."""

    index_key: str
    hash_key: str
    tag: str
    qos: QoS

    def done(self) -> None:
        """The transaction ran: kombu's ack of the tag must not write again."""
        self.qos.acked_early.add(self.tag)


def early_ack(job_id: Any, client: Any) -> EarlyAck | None:
    """What acks the message of ``job_id``'s running request in a transaction on redis-py
    ``client`` (the result backend's), or None when it cannot ride there (see the module doc)."""
    job_id = job_id.decode() if isinstance(job_id, bytes) else job_id
    requests = [r for r in active_requests() if getattr(r, "id", None) == job_id]
    if len(requests) != 1:
        return None
    request = requests[0]
    message = getattr(request, "message", None)
    channel: Any = getattr(message, "channel", None)
    qos = vars(channel).get("_qos") if channel is not None and hasattr(channel, "__dict__") else None
    tag = getattr(message, "delivery_tag", None)
    if (not isinstance(qos, QoS) or request.acknowledged or not getattr(request.task, "acks_late", False)
            or tag is None or tag not in qos._delivered or not same_target(channel.client, client)):
        return None
    prefix = channel.global_keyprefix or ""
    return EarlyAck(prefix + channel.unacked_index_key, prefix + channel.unacked_key, tag, qos)
