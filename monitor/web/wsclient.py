"""One dashboard's websocket inside the fan-out's event loop: an :class:`asyncio.Protocol`.

It costs a few kilobytes, not a thread. It writes what the fan-out gives it and reads what the
client sends only to answer pings and closes: the stream takes no input, so a message over
:data:`MAX_INBOUND_MESSAGE` bytes closes the socket with 1009 and more than
:data:`MAX_INBOUND_MESSAGES` messages with 1008. A client that stops reading is paused (its
kernel buffer and :data:`HIGH_WATER` bytes are all it holds) and catches up when it reads again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage

#: Largest inbound websocket message (bytes): clients send nothing, so a few KB is plenty.
MAX_INBOUND_MESSAGE = 4096
#: Inbound messages a client may send before the stream closes on it (policy violation).
MAX_INBOUND_MESSAGES = 16
#: Bytes queued for one client before it counts as not reading (then it is paused).
HIGH_WATER = 256 * 1024
#: Seconds a clean close waits for the client's closing frame before dropping the socket.
CLOSE_TIMEOUT = 2.0

#: Close codes (RFC 6455 §7.4.1) the monitor sends.
GOING_AWAY = 1001
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
TRY_AGAIN_LATER = 1013


class WsClient(asyncio.Protocol):
    """A socket whose handshake is done: frames out, control frames in.

    ``cursor`` is the seq of the last change the client has (its snapshot's, or ``since``);
    ``live`` means it is at the fan-out's head and gets each new batch written at once.
    ``on_gone(client)`` is called once when the socket is closed.
    """

    def __init__(self, address: str, identity: Any, cursor: int, on_gone: Callable[[WsClient], None]) -> None:
        self.address = address
        self.identity = identity
        #: The tenant the client is confined to (None: it sees all); set by the fan-out.
        self.tenant: str | None = None
        self.cursor = cursor
        self.live = False
        self.closing = False
        self.heard = time.monotonic()
        self.writable = asyncio.Event()
        self.writable.set()
        self.task: asyncio.Task[None] | None = None
        self._on_gone = on_gone
        self._gone = False
        self._transport: asyncio.Transport | None = None
        self._ws = Connection(ConnectionType.SERVER)
        self._messages = 0
        self._message_bytes = 0

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.live = False
        self.writable.set()  # a catch-up waiting for room ends
        if self.task is not None:
            self.task.cancel()
        if not self._gone:
            self._gone = True
            self._on_gone(self)

    def pause_writing(self) -> None:
        self.live = False
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        self.heard = time.monotonic()
        if self._ws.state is ConnectionState.CLOSED:
            return
        self._ws.receive_data(data)
        for event in self._ws.events():
            if not self._handle(event):
                return

    def eof_received(self) -> bool | None:
        self.close_now()
        return None

    # -- inbound ---------------------------------------------------------------------------

    def _handle(self, event: Any) -> bool:
        """Act on one inbound event; False once the socket is being closed for it."""
        if isinstance(event, Ping):
            self.write(self._ws.send(event.response()))
        elif isinstance(event, CloseConnection):
            if self._ws.state is ConnectionState.REMOTE_CLOSING:
                self.write(self._ws.send(event.response()))
            elif self._ws.state is ConnectionState.OPEN:  # a protocol error wsproto found
                self.close(event.code, event.reason or "protocol error", linger=False)
            self.close_now()
            return False
        elif isinstance(event, (TextMessage, BytesMessage)):
            return self._count(event)
        return True

    def _count(self, event: Message[Any]) -> bool:
        data = event.data
        self._message_bytes += len(data.encode() if isinstance(data, str) else data)
        if self._message_bytes > MAX_INBOUND_MESSAGE:
            self.close(MESSAGE_TOO_BIG, "this stream takes no input", linger=False)
            return False
        if event.message_finished:
            self._message_bytes = 0
            self._messages += 1
            if self._messages > MAX_INBOUND_MESSAGES:
                self.close(POLICY_VIOLATION, "this stream takes no input", linger=False)
                return False
        return True

    # -- outbound --------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue ``data`` (whole frames) unless the socket is closing."""
        if self._transport is not None and not self._transport.is_closing() and data:
            self._transport.write(data)

    def push(self, data: bytes, cursor: int) -> None:
        """Write the frames of a batch that ends at seq ``cursor``."""
        self.write(data)
        self.cursor = cursor

    def close(self, code: int, reason: str, linger: bool = True) -> None:
        """Send a closing frame with ``code``; with ``linger`` wait (a little) for the client's
        answer, otherwise drop the socket as soon as the frame is out (an abusive client)."""
        if self.closing:
            return
        self.closing = True
        self.live = False
        if self._ws.state is ConnectionState.OPEN:
            self.write(self._ws.send(CloseConnection(code=code, reason=reason)))
        if not linger or self._transport is None:
            self.close_now()
            return
        asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self.abort)

    def close_now(self) -> None:
        """Close the socket once what is queued is written."""
        self.closing = True
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Drop the socket at once, queued data and all."""
        if self._transport is not None and not self._gone:
            self._transport.abort()
