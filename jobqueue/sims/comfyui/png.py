"""Real PNG files without PIL: the simulator's generated images are uniform colours, so each
one is encoded row by row with zlib (memory stays one row wide whatever the size); a loaded
image's pixels are encoded the same way (:func:`rgb_png`).

Like ComfyUI's ``SaveImage`` (PIL's ``PngInfo.add_text``), text metadata such as the
``prompt`` and ``workflow`` JSON goes into ``tEXt`` chunks before the image data."""

from __future__ import annotations

import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def text_chunk(key: str, value: str) -> bytes:
    """One ``tEXt`` chunk (Latin-1 keyword, NUL, Latin-1 text), as PIL writes ``add_text``."""
    return _chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1", "replace"))


def solid_png(width: int, height: int, color: int, text: dict[str, str] | None = None) -> bytes:
    """Return the bytes of a ``width`` x ``height`` RGB PNG filled with ``color`` (0xRRGGBB),
    with one ``tEXt`` chunk per ``text`` entry."""
    pixel = bytes(((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF))
    row = b"\x00" + pixel * width  # filter type 0, then the pixels
    compressor = zlib.compressobj(6)
    parts = [compressor.compress(row) for _ in range(height)]
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    texts = b"".join(text_chunk(k, v) for k, v in (text or {}).items())
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + texts + _chunk(b"IDAT", b"".join(parts))
            + _chunk(b"IEND", b""))


def rgb_png(width: int, height: int, pixels: bytes, text: dict[str, str] | None = None) -> bytes:
    """Return the bytes of a ``width`` x ``height`` RGB PNG of ``pixels`` (RGB rows, top first)."""
    stride = width * 3
    compressor = zlib.compressobj(6)
    parts = [compressor.compress(b"\x00" + pixels[y * stride:(y + 1) * stride]) for y in range(height)]
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    texts = b"".join(text_chunk(k, v) for k, v in (text or {}).items())
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + texts + _chunk(b"IDAT", b"".join(parts))
            + _chunk(b"IEND", b""))
