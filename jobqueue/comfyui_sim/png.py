"""Real PNG files without PIL: the simulator's images are uniform colours, so each one is
encoded row by row with zlib (memory stays one row wide whatever the size)."""

from __future__ import annotations

import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def solid_png(width: int, height: int, color: int) -> bytes:
    """Return the bytes of a ``width`` x ``height`` RGB PNG filled with ``color`` (0xRRGGBB)."""
    pixel = bytes(((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF))
    row = b"\x00" + pixel * width  # filter type 0, then the pixels
    compressor = zlib.compressobj(6)
    parts = [compressor.compress(row) for _ in range(height)]
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")
