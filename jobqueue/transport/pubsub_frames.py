"""The payloads of pub/sub messages already in a redis-py connection's read buffer, taken in one pass.

redis-py's pure-Python RESP2 parser (used when hiredis is not installed) turns each ``pmessage``
reply into a list through a dozen Python calls (a recursive ``_read_response``, ``readline`` and
``read`` per element, the encoder per element, the connection's error handling): about 9 µs a
message, a sixth of the monitor's CPU per event at 12,000 events/s. :func:`take_pmessages`
reads the complete ``pmessage`` frames at the front of that parser's buffer with a few C calls
each and moves the buffer past them; whatever it does not recognise (a partial frame, a PONG, an
error, a frame it cannot parse) stays for ``read_response``, which reads it as before.

This uses redis-py's private parser internals (``_parser``, its ``SocketBuffer`` and that buffer's
``BytesIO``); tests/jobqueue/transport/test_pubsub_frames.py fails when they change. With any
other parser (hiredis, RESP3) it takes nothing and redis-py reads every message.
"""

from __future__ import annotations

import io
from typing import Any

from redis._parsers.resp2 import _RESP2Parser
from redis._parsers.socket import SocketBuffer

#: The start of every pattern message: an array of 4, its first element ``pmessage``.
_HEAD = b"*4\r\n$8\r\npmessage\r\n"
_CRLF = b"\r\n"


def _bulk_end(data: bytes, at: int, end: int) -> tuple[int, int] | None:
    """``(start, stop)`` of the bulk string whose ``$`` header is at ``at``, when it is
    complete in ``data[:end]`` and well formed; None otherwise."""
    if data[at:at + 1] != b"$":
        return None
    line = data.find(_CRLF, at, end)
    if line < 0:
        return None
    try:
        size = int(data[at + 1:line])
    except ValueError:
        return None
    start = line + 2
    stop = start + size
    if size < 0 or stop + 2 > end or data[stop:stop + 2] != _CRLF:
        return None
    return start, stop


def _buffer_of(conn: Any) -> io.BytesIO | None:
    """The ``BytesIO`` a connection's pure-Python RESP2 parser reads from, or None."""
    parser = getattr(conn, "_parser", None)
    if not isinstance(parser, _RESP2Parser):
        return None
    socket_buffer = getattr(parser, "_buffer", None)
    if not isinstance(socket_buffer, SocketBuffer):
        return None
    buffer = getattr(socket_buffer, "_buffer", None)
    return buffer if isinstance(buffer, io.BytesIO) else None


def take_pmessages(conn: Any) -> list[bytes]:
    """The data of every complete ``pmessage`` at the front of ``conn``'s read buffer, in order
    (empty payloads skipped, as kombu skips them); the buffer then starts after them."""
    buffer = _buffer_of(conn)
    if buffer is None:
        return []
    pos = buffer.tell()
    data = buffer.getvalue()
    end = len(data)
    out: list[bytes] = []
    at = pos
    while data.startswith(_HEAD, at):
        pattern = _bulk_end(data, at + len(_HEAD), end)
        channel = pattern and _bulk_end(data, pattern[1] + 2, end)
        payload = channel and _bulk_end(data, channel[1] + 2, end)
        if not payload:
            break
        if payload[1] > payload[0]:
            out.append(data[payload[0]:payload[1]])
        at = payload[1] + 2
    if at != pos:
        if at == end:  # all read: what SocketBuffer.purge does
            buffer.seek(0)
            buffer.truncate(0)
        else:
            buffer.seek(at)
    return out
