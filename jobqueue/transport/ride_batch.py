"""A message's writes with the records that ride with it: one transaction, one wait.

:func:`send_batch` sends a message's commands (kombu's) after a rider's records
(:mod:`jobqueue.transport.riders`) in one ``MULTI``/``EXEC`` and reads the replies: one round
trip, a Redis ``WAIT`` for replicas last when asked.

:class:`EarlyWrite` is the same transaction for a message whose ``task-sent`` event follows it
(Celery publishes it right after the message, on the same channel). The transaction is written
to the socket at once and its replies are left unread while Celery builds the event (about a
quarter of a millisecond of client CPU that would otherwise stand between the submit and the
worker); the event's ``PUBLISH`` then follows on the same connection and the replies of both are
read together: still one wait. The event is published by a script only when the rider's
:attr:`~jobqueue.transport.riders.Rider.guard` key (the job's submit record, written in the
transaction) is in Redis, so a refused transaction publishes no event, as when the event was
inside it.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from jobqueue.transport.replication import check_wait, queue_wait, replicas_to_wait
from jobqueue.transport.riders import Rider

log = logging.getLogger(__name__)

#: Publishes ``ARGV[2]`` on channel ``ARGV[1]`` only when ``KEYS[1]`` exists; -1 when it does not.
GUARDED_PUBLISH = ("if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('PUBLISH', ARGV[1], ARGV[2]) "
                   "end return -1")


def _transaction(client: Any, commands: list[tuple[Any, ...]], rider: Rider) -> tuple[Any, int]:
    """A pipeline (no response callbacks) holding ``MULTI``, the rider's commands, ``commands``
    and ``EXEC``, and how many of them are the rider's."""
    pipe = client.pipeline(transaction=False)
    # Without response callbacks: inside MULTI each command answers QUEUED, which redis-py's
    # parsers of some commands (ZADD) refuse; EXEC's reply holds the answers.
    pipe.response_callbacks = {}
    pipe.execute_command("MULTI")
    rider.add(pipe)
    ridden = len(pipe.command_stack) - 1
    for name, *args in commands:
        getattr(pipe, name)(*args)
    pipe.execute_command("EXEC")
    return pipe, ridden


def send_batch(client: Any, commands: list[tuple[Any, ...]], rider: Rider | None, replicas: int,
               timeout: float, job_id: Any) -> None:
    """Send a message's ``commands`` (kombu's) in one round trip on ``client``: after
    ``rider``'s commands in one ``MULTI``/``EXEC`` when there is a rider, then ``WAIT`` for
    ``replicas`` (when asked) covering them all. Raises the error of a refused command (a
    refused transaction wrote nothing) and :class:`~jobqueue.errors.NotReplicated`."""
    if rider is not None:
        pipe, ridden = _transaction(client, commands, rider)
    else:
        pipe, ridden = client.pipeline(transaction=False), 0
        for name, *args in commands:
            getattr(pipe, name)(*args)
    with pipe:
        if replicas:
            queue_wait(pipe, replicas_to_wait(client, replicas), timeout)
        replies = pipe.execute(raise_on_error=False)
    acked = replies.pop() if replicas else None
    if rider is not None:
        replies = _transaction_replies(replies, rider, ridden, job_id)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    if replicas:
        check_wait(client, acked, replicas, timeout, f"the message of job {job_id}", job_id)


def _transaction_replies(replies: list[Any], rider: Rider, ridden: int, job_id: Any) -> list[Any]:
    """The replies of kombu's commands in a ``[MULTI, rider..., kombu..., EXEC]`` pipeline;
    ``rider.replies`` set. A refused transaction raises (nothing was written)."""
    done = replies[-1]
    if isinstance(done, Exception):  # EXECABORT: the first refused command says why
        raise next((r for r in replies[1:-1] if isinstance(r, Exception)), done)
    rider.replies, rider.with_message = list(done[:ridden]), True
    try:
        rider.check(rider.replies)
    except Exception:  # the message went with it: the job is queued all the same
        log.exception("job %s: a record sent with its message failed; the job is queued", job_id)
    return list(done[ridden:])


class EarlyWrite:
    """A rider's transaction with its message, written before the message's event is built;
    :meth:`finish` sends the event's commands behind it and reads every reply."""

    def __init__(self, client: Any, commands: list[tuple[Any, ...]], rider: Rider, timeout: float,
                 job_id: Any) -> None:
        self.client, self.commands, self.rider, self.timeout, self.job_id = client, commands, rider, timeout, job_id
        #: The connection holding the written transaction whose replies are unread (None once read).
        self.connection: Any = None
        self.count = self.ridden = 0

    def send(self) -> None:
        """Write the transaction; its replies stay unread on a connection kept out of the pool."""
        pipe, self.ridden = _transaction(self.client, self.commands, self.rider)
        stack = [args for args, _options in pipe.command_stack]
        pool = self.client.connection_pool
        connection = pool.get_connection()
        try:
            connection.send_packed_command(pack_commands(connection, stack))
        except BaseException:
            connection.disconnect()
            pool.release(connection)
            raise
        self.connection, self.count = connection, len(stack)

    def finish(self, extra: list[tuple[Any, ...]]) -> None:
        """Send ``extra`` (the event's ``publish`` commands, guarded) behind the transaction and
        read all the replies; raises like :func:`send_batch`. Called again after a failure (a
        retried publish, or the rider's flush), it sends the whole transaction anew."""
        connection, self.connection = self.connection, None
        if connection is None:  # the first try failed: as before early writes, all in one
            self._send_all(extra)
            return
        try:
            replies = self._replies(connection, extra)
        except Exception as exc:  # the connection went away (a reconnect closes the pool's)
            log.debug("job %s: the replies of its message's write were lost: %s", self.job_id, exc)
            self._after_lost_replies(extra)
            return
        for reply in [*_transaction_replies(replies[:self.count], self.rider, self.ridden, self.job_id),
                      *replies[self.count:]]:
            if isinstance(reply, Exception):
                raise reply

    def _replies(self, connection: Any, extra: list[tuple[Any, ...]]) -> list[Any]:
        """Write ``extra`` behind the transaction, read every reply; the connection goes back
        to the pool (disconnected when anything but an error reply went wrong)."""
        pool = self.client.connection_pool
        try:
            if getattr(connection, "_sock", None) is None:  # closed: a write would open a new one
                raise redis.ConnectionError("the connection closed before the replies were read")
            if extra:
                connection.send_packed_command(pack_commands(connection, [self._guarded(c) for c in extra]))
            return [_read(connection) for _ in range(self.count + len(extra))]
        except BaseException:
            connection.disconnect()
            raise
        finally:
            pool.release(connection)

    def _after_lost_replies(self, extra: list[tuple[Any, ...]]) -> None:
        """The transaction's replies were lost with its connection: the rider's guard key (the
        job's record, written in it) says whether it ran; if it did, only ``extra`` is sent,
        else everything again (raising what that raises)."""
        guard = self.rider.guard
        if guard is None or not self.client.exists(guard):
            self._send_all(extra)
            return
        self.rider.replies, self.rider.with_message = [], True
        for name, *args in extra:
            getattr(self.client, name)(*args)

    def _send_all(self, extra: list[tuple[Any, ...]]) -> None:
        """The transaction and ``extra`` sent anew, in one round trip (:func:`send_batch`)."""
        send_batch(self.client, [*self.commands, *extra], self.rider, 0, self.timeout, self.job_id)

    def _guarded(self, command: tuple[Any, ...]) -> tuple[Any, ...]:
        name, *args = command
        guard = self.rider.guard
        if guard is None or str(name).lower() != "publish":
            return (str(name).upper(), *args)
        return ("EVAL", GUARDED_PUBLISH, 1, guard, *args)


def pack_commands(connection: Any, commands: list[tuple[Any, ...]]) -> list[bytes]:
    """``commands`` in Redis's wire format, as ``connection.pack_commands`` packs them (same
    bytes), in one pass: a third of redis-py's time, on the path from a submit to its worker.
    Arguments other than ``bytes``, ``str``, ``int`` and ``float`` (exactly those types) go to
    redis-py's packer, which encodes or refuses them as it always does."""
    out: list[bytes] = []
    add = out.append
    for args in commands:
        add(b"*%d\r\n" % len(args))
        for arg in args:
            kind = type(arg)
            if kind is str:
                arg = arg.encode()
            elif kind is int or kind is float:
                arg = repr(arg).encode()
            elif kind is not bytes:
                return list(connection.pack_commands(commands))
            add(b"$%d\r\n" % len(arg))
            add(arg)
            add(b"\r\n")
    return [b"".join(out)]


def _read(connection: Any) -> Any:
    """One reply; an error reply returned, not raised (the replies after it are still due)."""
    try:
        return connection.read_response()
    except redis.ResponseError as exc:
        return exc
