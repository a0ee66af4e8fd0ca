"""The one-pass pmessage taker reads what redis-py's own parser reads, and leaves the rest to it."""

from __future__ import annotations

import socket
from typing import Any

from redis.connection import Connection

from jobqueue.transport.pubsub_frames import take_pmessages


def _frame(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _pmessage(data: bytes, channel: bytes = b"/0.celeryev/task.started") -> bytes:
    return _frame(b"pmessage", b"/0.celeryev/*", channel, data)


def _connection(wire: bytes) -> tuple[Any, socket.socket]:
    """A redis-py RESP2 connection whose socket holds ``wire`` (read by its pure-Python parser)."""
    ours, theirs = socket.socketpair()
    conn = Connection(protocol=2, socket_read_size=64)
    from redis._parsers.resp2 import _RESP2Parser

    conn._parser = _RESP2Parser(socket_read_size=64)
    conn._sock = ours
    conn._parser.on_connect(conn)
    theirs.sendall(wire)
    return conn, theirs


def _read_all(conn: Any, fast: bool, expected: int) -> list[Any]:
    got: list[Any] = []
    while len(got) < expected:
        if fast:
            got.extend(take_pmessages(conn))
            if len(got) >= expected:
                break
        msg = conn.read_response()
        if isinstance(msg, list) and msg[0] == b"pmessage":
            if msg[3] or not fast:  # the reader skips empty payloads whichever way they come
                got.append(msg[3])
        else:
            got.append(msg)
    return got


def test_messages_read_in_one_pass_are_the_ones_redis_py_reads_in_order_partial_frames_included() -> None:
    # Given messages of many sizes (binary data with CRLFs, an empty one kombu skips, a
    # PONG between them), sent through a socket that is read 64 bytes at a time
    datas = [b"x" * n + b"\r\n$3\r\n" for n in range(0, 300, 7)]
    wire = b"".join(_pmessage(d) for d in datas[:20]) + _pmessage(b"") + b"*2\r\n$4\r\npong\r\n$0\r\n\r\n" \
        + b"".join(_pmessage(d) for d in datas[20:])
    expected = [*datas[:20], b"", [b"pong", b""], *datas[20:]]
    # When redis-py reads them alone, and with the one-pass taker first each time
    slow_conn, peer1 = _connection(wire)
    fast_conn, peer2 = _connection(wire)
    slow = _read_all(slow_conn, False, len(expected))
    fast = _read_all(fast_conn, True, len(expected) - 1)  # the empty payload is skipped
    # Then both read the same messages in the same order, the empty payload aside
    assert slow == expected
    assert fast == [m for m in expected if m != b""]
    # And the buffer is left empty, for the next reply
    assert fast_conn._parser._buffer.unread_bytes() == 0
    peer1.close()
    peer2.close()


def test_nothing_is_taken_from_a_buffer_that_does_not_start_with_a_complete_pmessage() -> None:
    # Given a partial frame, and an error reply, at the front of the buffer
    whole = _pmessage(b"payload")
    for wire in (whole[:-3], b"-ERR something\r\n" + whole):
        conn, peer = _connection(wire)
        assert conn.can_read(timeout=1)
        before = conn._parser._buffer.unread_bytes()
        # Then the taker leaves it all for redis-py's reply parser
        assert take_pmessages(conn) == []
        assert conn._parser._buffer.unread_bytes() == before
        peer.close()


def test_a_connection_with_another_parser_is_left_to_redis_py() -> None:
    class Other:
        _parser = object()

    assert take_pmessages(Other()) == []
