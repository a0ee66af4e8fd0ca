"""Live previews of running jobs: throttled, small, only the latest per job.

Connectors hand every preview frame the service sends to ``job.report_preview(data, mime)``
(:class:`jobqueue.connectors.base.Job`); the task gives each job a :class:`PreviewPublisher`,
which

* throttles to at most one stored frame per ``min_interval`` (0.5 s: 2 per second) per job,
  keeping the newest frame of a burst and storing it when the interval is over;
* keeps it small: a frame wider or taller than :data:`MAX_SIDE` or bigger than
  :data:`MAX_BYTES` is downscaled and re-encoded as JPEG (with Pillow, the ``previews``
  extra; without it such a frame is dropped);
* stores only the latest frame per job, in the result backend's Redis under
  :func:`jobqueue.shared.records.preview_key` with a TTL (:class:`RedisPreviewStore`);
* tells monitors through ``notify(seq)``: the task merges ``preview`` (the frame's sequence
  number) into the job's progress, so the ``task-progress`` event carries it and the monitor's
  job page and worker card fetch ``GET /api/jobs/<id>/preview`` when it changes.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jobqueue.shared.records import backend_client, preview_key, result_client

log = logging.getLogger(__name__)

#: At most one stored preview per this many seconds per job (2 per second).
MIN_INTERVAL = 0.5
#: Longest side (px) of a stored preview; bigger frames are downscaled.
MAX_SIDE = 512
#: Largest stored preview (bytes); bigger frames are re-encoded as JPEG.
MAX_BYTES = 200_000
#: JPEG quality of re-encoded previews.
JPEG_QUALITY = 80
#: Seconds a stored preview lives (a finished job's preview simply expires).
PREVIEW_TTL = 3600
#: MIME types browsers show and we store.
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif")


@dataclass(frozen=True)
class Preview:
    """One stored preview frame."""

    data: bytes
    mime: str
    seq: int
    at: float


class RedisPreviewStore:
    """Latest preview per job in Redis (``client`` is passed in; nothing connects here)."""

    def __init__(self, client: Any, ttl: int = PREVIEW_TTL) -> None:
        self.client = client
        self.ttl = ttl

    def put(self, job_id: str, data: bytes, mime: str) -> int:
        """Replace the job's preview; return its sequence number (1, 2, ...)."""
        key = preview_key(job_id)
        pipe = self.client.pipeline()
        pipe.hincrby(key, "seq", 1)
        pipe.hset(key, mapping={"data": data, "mime": mime, "at": repr(time.time())})
        pipe.expire(key, self.ttl)
        seq, _, _ = pipe.execute()
        return int(seq)

    def get(self, job_id: str) -> Preview | None:
        """The job's latest preview, or None."""
        raw = self.client.hgetall(preview_key(job_id))
        if not raw or b"data" not in raw:
            return None
        return Preview(data=raw[b"data"], mime=raw.get(b"mime", b"image/jpeg").decode(),
                       seq=int(raw.get(b"seq", b"0")), at=float(raw.get(b"at", b"0")))


def shrink(data: bytes, mime: str, *, max_side: int = MAX_SIDE, max_bytes: int = MAX_BYTES) -> tuple[bytes, str] | None:
    """``(data, mime)`` small enough to store, or None when the frame cannot be used.

    A frame within both limits is kept as it is; a bigger one is downscaled to ``max_side``
    and re-encoded as JPEG (Pillow needed).
    """
    if mime not in IMAGE_TYPES:
        return None
    try:
        from PIL import Image
    except ImportError:
        return (data, mime) if len(data) <= max_bytes else None
    try:
        with Image.open(io.BytesIO(data)) as image:
            if len(data) <= max_bytes and max(image.size) <= max_side:
                return data, mime
            image.thumbnail((max_side, max_side))
            out = io.BytesIO()
            image.convert("RGB").save(out, format="JPEG", quality=JPEG_QUALITY)
    except Exception:  # not an image we can read: do not store it
        log.debug("undecodable preview frame of %d bytes", len(data), exc_info=True)
        return None
    return out.getvalue(), "image/jpeg"


class PreviewPublisher:
    """Throttle, shrink, store and announce one job's previews (see the module doc)."""

    def __init__(
        self,
        job_id: str,
        store: RedisPreviewStore,
        notify: Callable[[int], object],
        *,
        min_interval: float = MIN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job_id = job_id
        self._store = store
        self._notify = notify
        self._interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last = float("-inf")
        self._pending: tuple[bytes, str] | None = None
        self._timer: threading.Timer | None = None
        self._closed = False
        #: How many frames were stored (for tests and logs).
        self.stored = 0

    def offer(self, data: bytes, mime: str) -> None:
        """Take one frame: store it now, or keep it as the newest of a burst."""
        with self._lock:
            if self._closed:
                return
            wait = self._last + self._interval - self._clock()
            if wait > 0:
                self._pending = (data, mime)
                if self._timer is None:
                    self._timer = threading.Timer(wait, self._flush)
                    self._timer.daemon = True
                    self._timer.start()
                return
            self._last = self._clock()
        self._publish(data, mime)

    def _flush(self) -> None:
        with self._lock:
            self._timer = None
            frame, self._pending = self._pending, None
            if frame is None or self._closed:
                return
            self._last = self._clock()
        self._publish(*frame)

    def _publish(self, data: bytes, mime: str) -> None:
        small = shrink(data, mime)
        if small is None:
            return
        try:
            seq = self._store.put(self.job_id, *small)
        except Exception:
            log.warning("job %s: could not store a preview", self.job_id, exc_info=True)
            return
        self.stored += 1
        with self._lock:
            if self._closed:
                return
        self._notify(seq)

    def close(self) -> None:
        """Drop a pending frame and stop announcing (the job ended)."""
        with self._lock:
            self._closed = True
            self._pending = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


def publisher_for(app: Any, job_id: str, notify: Callable[[int], object], *,
                  backend: Any = None) -> PreviewPublisher | None:
    """A publisher storing in ``app``'s result backend Redis (``backend``: that one, as a job's
    thread has it, from whichever thread the first frame comes), or None (previews dropped)
    when the result backend is not Redis."""
    client = result_client(app) if backend is None else backend_client(backend)
    if client is None:
        return None
    return PreviewPublisher(job_id, RedisPreviewStore(client), notify)
