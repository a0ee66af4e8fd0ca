"""Giving memory back to the system after a burst of events.

A burst the writer could not apply at once waits in its queue as raw messages (about 850 bytes
each: 100,000 of them are ~85 MB). Once the queue is drained Python frees them, but glibc's
allocator keeps most of the freed pages mapped, so the monitor's RSS stayed at its peak long
after the burst (285 MB after 360,000 events at 12,000/s). :func:`release_freed_memory` asks
glibc to return them (``malloc_trim``); the writer calls it once its queue ran dry after a
backlog (:class:`monitor.ingest.writer.Writer`). Elsewhere (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import cache


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def release_freed_memory() -> bool:
    """Return the heap's free pages to the system; True when the C library could."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
