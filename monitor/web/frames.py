"""The few bytes of the websocket protocol (RFC 6455) the monitor writes itself.

The server's data frames are unmasked and uncompressed, so a change encoded once is the same
bytes for every dashboard: :mod:`monitor.web.fanout` writes one ``bytes`` object to hundreds of
sockets. Reading what clients send (masking, fragments, control frames) is left to ``wsproto``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from werkzeug.datastructures import Headers

#: The GUID RFC 6455 appends to a client's key to prove the server speaks websocket.
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: A ping with no payload (FIN, opcode 0x9).
PING = b"\x89\x00"


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame carrying ``payload`` (UTF-8 text)."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x81, size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for the client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()


def upgrade_problem(method: str, headers: Headers | Mapping[str, str]) -> str | None:
    """Why this request is no websocket opening handshake (RFC 6455 §4.2.1), or None."""
    if method != "GET":
        return "a websocket opens with GET"
    if "websocket" not in headers.get("Upgrade", "").lower():
        return "Upgrade: websocket is missing"
    if "upgrade" not in {t.strip().lower() for t in headers.get("Connection", "").split(",")}:
        return "Connection: Upgrade is missing"
    if headers.get("Sec-WebSocket-Version", "").strip() != "13":
        return "only websocket version 13 is spoken"
    try:
        raw = base64.b64decode(headers.get("Sec-WebSocket-Key", "").strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        return "Sec-WebSocket-Key is not 16 bytes in base64"
    return None


def switching_protocols(key: str) -> bytes:
    """The server's handshake answer: 101, no subprotocol, no extension (no compression)."""
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key.strip())}\r\n"
        "\r\n"
    ).encode()


@dataclass(frozen=True)
class Refusal:
    """Why a client may not open ``/ws``: the HTTP status (401, 403, 429) and a message; what
    an authorize callable (:data:`monitor.web.ws.Authorize`) returns to refuse the handshake."""

    status: int
    message: str
