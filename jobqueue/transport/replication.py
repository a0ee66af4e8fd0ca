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
"""

from __future__ import annotations

from typing import Any

from jobqueue.errors import NotReplicated
from jobqueue.shared.records import replication_fence_key


def queue_wait(pipe: Any, replicas: int, timeout: float) -> None:
    """Queue ``WAIT replicas timeout`` on ``pipe`` (a pipeline without ``MULTI``)."""
    pipe.execute_command("WAIT", replicas, max(1, round(timeout * 1000)))


def check_wait(acked: Any, replicas: int, timeout: float, what: str, job_id: str | None = None) -> int:
    """The reply of a ``WAIT``; :class:`~jobqueue.errors.NotReplicated` when fewer than
    ``replicas`` replicas confirmed ``what`` within ``timeout``."""
    if isinstance(acked, Exception):
        raise acked
    count = int(acked)
    if count < replicas:
        raise NotReplicated(f"{what} reached the Redis master but {count} of the {replicas} replica(s) asked "
                            f"for confirmed it within {timeout:g} s (JOBQUEUE_REDIS_WAIT_REPLICAS / "
                            "JOBQUEUE_REDIS_WAIT_TIMEOUT): a failover now would lose it",
                            job_id=job_id, replicas=count)
    return count


def wait_after(client: Any, replicas: int, timeout: float, what: str, job_id: str | None = None) -> int:
    """Wait until ``replicas`` replicas hold every write the master of ``client`` made so far
    (on any connection): a fence write, then ``WAIT``, in one round trip."""
    with client.pipeline(transaction=False) as pipe:
        pipe.set(replication_fence_key(), b"1")
        queue_wait(pipe, replicas, timeout)
        replies = pipe.execute(raise_on_error=False)
    return check_wait(replies[-1], replicas, timeout, what, job_id)
