"""A frozen result subscription is noticed: health checks on Celery's result consumer (Redis).

``JobHandle.wait()`` follows a job through Celery's Redis result consumer: one pub/sub
connection subscribed to the job's result key, read only when its socket is readable. Through
a link that stops answering without closing (a dropped NAT entry, a proxy that stops
forwarding), that socket is simply never readable again: no error, no health check (redis-py
checks a pub/sub connection only when a message is read), and every progress message after
the freeze is lost. The final state still arrives (``wait()`` re-reads the stored state on a
fresh connection every few seconds), but the progress stream stays dead for the rest of the
wait.

:func:`check_subscription` is called by ``wait()`` between two reads: it sends the pub/sub
connection redis-py's own health-check PING when one is due (every
``JOBQUEUE_REDIS_HEALTH_INTERVAL`` s on a quiet connection; Celery's consumer reads the answer
with the next message and redis-py counts it), and once :data:`MISSED_PINGS` went unanswered it
drops the connection and has Celery's consumer subscribe again on a new one (re-reading the
state of every subscribed job first, so nothing is missed); one is enough when ``wait()``'s
own re-read of the state just failed on a dead connection. That re-read itself waits out its
socket timeout on the dead pooled connection (``max(5, 2 × JOBQUEUE_REDIS_HEALTH_INTERVAL)``),
so a frozen subscription is replaced within about that + 4 s: measured 7.2 s with a 2 s
interval, 24.3 s with the default 10 s (docs/benchmarks.md).

PRIVATE TOUCHPOINTS (Celery 5.5-5.7, redis-py 5-8), beside :mod:`jobqueue.transport.internals`:
``celery.backends.redis.ResultConsumer._pubsub``, ``_locked()`` and ``_reconnect_pubsub()``;
redis-py's ``PubSub.check_health()`` and ``PubSub.health_check_response_counter``. Checked by
tests/jobqueue/client/test_frozen_link.py through a proxy that stops forwarding.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

#: Unanswered health-check PINGs after which the subscription is replaced (kombu drops its own
#: pub/sub connections after as many).
MISSED_PINGS = 2


def check_subscription(backend: Any, *, suspect: bool = False) -> bool:
    """One health check of ``backend``'s result subscription (a Redis result backend's; any
    other backend: nothing to do). Returns True when it found the subscription frozen and
    subscribed again on a new connection. ``suspect``: a read through the same backend just
    failed on a dead connection, so one unanswered PING is enough. Raises the backend's
    connection errors (the caller waits through an outage)."""
    consumer = getattr(backend, "result_consumer", None)
    locked = getattr(consumer, "_locked", None)
    if consumer is None or locked is None:
        return False
    with locked():
        pubsub = getattr(consumer, "_pubsub", None)
        connection = getattr(pubsub, "connection", None)
        if pubsub is None or connection is None or not getattr(connection, "health_check_interval", 0):
            return False
        missed = int(getattr(pubsub, "health_check_response_counter", 0) or 0)
        if missed < (1 if suspect else MISSED_PINGS):
            pubsub.check_health()  # a PING when one is due; its answer is read with the messages
            return False
        log.warning("result subscription silent (%d health checks unanswered): subscribing again", missed)
        try:
            pubsub.close()  # drops the dead socket (no reply awaited)
        except Exception:  # already broken: the new connection is what matters
            log.debug("closing a frozen result subscription failed", exc_info=True)
        consumer._reconnect_pubsub()
    return True
