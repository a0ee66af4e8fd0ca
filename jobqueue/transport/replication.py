"""Writes that must reach a replica before we go on: Redis ``WAIT``.

Redis replicates asynchronously: a write the master acknowledged is lost when the master dies
before its replicas got it, and Sentinel then promotes a replica that never saw it. For the
writes that a failover must not lose (a job's message and submit record before
``submit_job()`` returns, a job's final state before its message is acked), jobqueue asks the
master to ``WAIT`` until ``replicas`` replicas hold everything written so far on the
connection, for at most ``timeout`` seconds (``JOBQUEUE_REDIS_WAIT_REPLICAS``, on by default
with Sentinel, and ``JOBQUEUE_REDIS_WAIT_TIMEOUT``).

``WAIT`` covers the writes of the connection it is sent on (Redis keeps each client's last
replication offset), and inside ``MULTI`` it never blocks. So it travels in the same
non-transactional pipeline as the writes it must cover (:func:`queue_wait` then
:func:`check_wait`), or, after a transaction or a write on another connection, behind a fence:
one tiny write on the connection of the ``WAIT`` (:func:`wait_after`), whose replication
offset is past every write the master made before it.

A master with fewer replicas connected than asked for (the promoted replica right after a
failover, before a new replica attaches) cannot do better: a write then waits for the replicas
it has, none at all when it has none, with a warning every :data:`WARN_EVERY` seconds: the
group runs without a safety net and a second failure would lose what it wrote. The count comes
from ``ROLE``, asked at most every :data:`ROLE_EVERY` seconds per client, and again whenever a
``WAIT`` fell short (so the first write after a failover does not fail for want of the replica
that just became master). A replica that is connected but does not confirm in time is
:class:`~jobqueue.errors.NotReplicated`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from jobqueue.errors import NotReplicated
from jobqueue.shared.records import replication_fence_key

log = logging.getLogger(__name__)

#: Seconds a client trusts the replica count ``ROLE`` gave it.
ROLE_EVERY = 1.0
#: Seconds between two warnings that a master has fewer replicas than asked for.
WARN_EVERY = 30.0
#: Attribute of a redis-py client holding ``(checked_at, replicas connected)``.
_CACHE_ATTR = "_jobqueue_replicas"
#: Attribute of a redis-py client holding when it last warned of missing replicas.
_WARNED_ATTR = "_jobqueue_replicas_warned"


def connected_replicas(client: Any, *, fresh: bool = False) -> int:
    """Replicas connected to the master ``client`` talks to (``ROLE``; 0 when it is not a
    master), asked at most every :data:`ROLE_EVERY` s unless ``fresh``."""
    now = time.monotonic()
    cached = getattr(client, _CACHE_ATTR, None)
    if not fresh and cached is not None and now - cached[0] < ROLE_EVERY:
        return int(cached[1])
    role = client.execute_command("ROLE")
    kind = role[0].decode() if isinstance(role[0], bytes) else str(role[0])
    count = len(role[2]) if kind == "master" and len(role) > 2 else 0
    setattr(client, _CACHE_ATTR, (now, count))
    return count


def replicas_to_wait(client: Any, replicas: int) -> int:
    """How many replicas a write on ``client`` waits for: ``replicas``, or fewer when the
    master has fewer connected (with a warning now and then)."""
    return min(replicas, connected_replicas(client))


def queue_wait(pipe: Any, replicas: int, timeout: float) -> None:
    """Queue ``WAIT replicas timeout`` on ``pipe`` (a pipeline without ``MULTI``)."""
    pipe.execute_command("WAIT", replicas, max(1, round(timeout * 1000)))


def check_wait(client: Any, acked: Any, replicas: int, timeout: float, what: str, job_id: str | None = None) -> int:
    """The reply of a ``WAIT`` for ``replicas`` asked: fine when that many replicas confirmed
    ``what``, or every replica the master has (then with a warning now and then);
    :class:`~jobqueue.errors.NotReplicated` when a connected replica did not in ``timeout``."""
    if isinstance(acked, Exception):
        raise acked
    count = int(acked)
    if count >= replicas:
        return count
    connected = connected_replicas(client, fresh=True)
    if count >= connected:
        now = time.monotonic()
        if now - getattr(client, _WARNED_ATTR, -WARN_EVERY) >= WARN_EVERY:
            setattr(client, _WARNED_ATTR, now)
            log.warning("the Redis master has %d replica(s) connected, %d asked for "
                        "(JOBQUEUE_REDIS_WAIT_REPLICAS): writes go on unprotected until one attaches",
                        connected, replicas)
        return count
    raise NotReplicated(f"{what} reached the Redis master but {count} of the {replicas} replica(s) asked "
                        f"for confirmed it within {timeout:g} s (JOBQUEUE_REDIS_WAIT_REPLICAS / "
                        "JOBQUEUE_REDIS_WAIT_TIMEOUT): a failover now would lose it",
                        job_id=job_id, replicas=count)


def wait_after(client: Any, replicas: int, timeout: float, what: str, job_id: str | None = None) -> int:
    """Wait until ``replicas`` replicas (or every one the master has) hold every write the
    master of ``client`` made so far, on any connection: a fence write, then ``WAIT``."""
    wanted = replicas_to_wait(client, replicas)
    with client.pipeline(transaction=False) as pipe:
        pipe.set(replication_fence_key(), b"1")
        queue_wait(pipe, wanted, timeout)
        replies = pipe.execute(raise_on_error=False)
    return check_wait(client, replies[-1], replicas, timeout, what, job_id)
