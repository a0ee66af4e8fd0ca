"""Output files of any kind and size for the simulation connector, made chunk by chunk.

Tests and benchmarks need a job that yields a video, an audio track, a 3D model... of a chosen
size without ComfyUI; each generator here yields a valid file of that kind in chunks of at
most :data:`CHUNK` bytes, so a 500 MB output never exists whole in memory:

- ``image``: a PNG (one grey pixel) whose size comes from a private ancillary chunk (``jqPd``),
  which decoders skip;
- ``video``: a real 4 s VP9 clip in MP4 (``media_files/clip.mp4``, moov first so it plays as it
  streams), padded by a top-level ``free`` box, which players skip; it plays and seeks in
  Chromium;
- ``audio``: a WAV (PCM, 8 kHz mono, a 440 Hz tone), its length set by the size;
- ``model``: a binary glTF (GLB) whose BIN chunk carries the size;
- ``text``: UTF-8 lines; ``file``: opaque bytes.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterator
from importlib import resources

#: Largest chunk a generator yields.
CHUNK = 1 << 20
#: File name extension of each kind.
EXTENSIONS = {"image": "png", "video": "mp4", "audio": "wav", "model": "glb", "text": "txt", "file": "bin"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def clip() -> bytes:
    """The real 4 s, 64x48 VP9 clip (MP4) every simulated video starts with (6 KB)."""
    return resources.files("jobqueue.connectors").joinpath("media_files/clip.mp4").read_bytes()


def _zeros(count: int) -> Iterator[bytes]:
    block = bytes(min(count, CHUNK))
    while count > 0:
        step = min(count, CHUNK)
        yield block if step == len(block) else block[:step]
        count -= step


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_pixel() -> tuple[bytes, bytes]:
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    return _PNG_SIGNATURE + header, _png_chunk(b"IDAT", zlib.compress(b"\x00\x80")) + _png_chunk(b"IEND", b"")


def png(size: int) -> Iterator[bytes]:
    """A 1x1 grey PNG of ``size`` bytes (at least 12 more than the smallest)."""
    head, tail = _png_pixel()
    pad = max(size - len(head) - len(tail) - 12, 0)
    yield head + struct.pack(">I", pad) + b"jqPd"
    crc = zlib.crc32(b"jqPd")
    for block in _zeros(pad):
        crc = zlib.crc32(block, crc)
        yield block
    yield struct.pack(">I", crc) + tail


def mp4(size: int) -> Iterator[bytes]:
    """The clip, padded to ``size`` bytes by ``free`` boxes (each under 4 GiB)."""
    data = clip()
    yield data
    left = size - len(data)
    while left >= 8:
        box = min(left, (1 << 32) - 1)
        yield struct.pack(">I", box) + b"free"
        yield from _zeros(box - 8)
        left -= box


def wav(size: int, rate: int = 8000) -> Iterator[bytes]:
    """A mono 16-bit PCM WAV of a 440 Hz tone, ``size`` bytes (its data rounded to samples)."""
    frames = max(size - 44, 2) // 2
    data = frames * 2
    yield (b"RIFF" + struct.pack("<I", 36 + data) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
           + b"data" + struct.pack("<I", data))
    samples = rate // 440
    period = struct.pack(f"<{samples}h", *(int(8000 * math.sin(2 * math.pi * i / samples)) for i in range(samples)))
    block = period * max(1, CHUNK // len(period))
    left = data
    while left > 0:
        step = min(left, len(block))
        yield block[:step]
        left -= step


def glb(size: int) -> Iterator[bytes]:
    """A binary glTF 2.0 (no meshes) whose BIN chunk makes it ``size`` bytes."""
    doc = b'{"asset":{"version":"2.0"},"buffers":[{"byteLength":%d}]}'
    body = max(size - 12 - 8 - 64 - 8, 0) // 4 * 4
    text = doc % body
    text += b" " * (-len(text) % 4)
    total = 12 + 8 + len(text) + 8 + body
    yield b"glTF" + struct.pack("<II", 2, total) + struct.pack("<I", len(text)) + b"JSON" + text
    yield struct.pack("<I", body) + b"BIN\x00"
    yield from _zeros(body)


def text(size: int) -> Iterator[bytes]:
    """``size`` bytes of numbered UTF-8 lines."""
    line = b"simulated output line\n"
    block = line * max(1, CHUNK // len(line))
    left = size
    while left > 0:
        step = min(left, len(block))
        yield block[:step]
        left -= step


def generate(kind: str, size: int) -> Iterator[bytes]:
    """The chunks of a file of ``kind`` (:data:`EXTENSIONS`) of about ``size`` bytes."""
    makers = {"image": png, "video": mp4, "audio": wav, "model": glb, "text": text, "file": _zeros}
    return makers[kind](max(0, size))


def poster() -> bytes:
    """The clip's first frame as a PNG (its poster)."""
    return resources.files("jobqueue.connectors").joinpath("media_files/poster.png").read_bytes()
