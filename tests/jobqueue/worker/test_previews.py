"""Live previews: throttled to 2 per second per job, small, only the latest kept (real Redis)."""

from __future__ import annotations

import io
import threading
import time

from PIL import Image

from jobqueue.connectors.base import Job
from jobqueue.shared.previews import MAX_SIDE, PreviewPublisher, RedisPreviewStore, preview_key, shrink
from tests.helpers import wait_for


def png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


class Announcements:
    """Collects what the publisher announces, with the time of each."""

    def __init__(self) -> None:
        self.items: list[tuple[float, int]] = []
        self.lock = threading.Lock()

    def __call__(self, seq: int) -> None:
        with self.lock:
            self.items.append((time.monotonic(), seq))


def test_a_burst_stores_its_first_frame_at_once_and_its_last_when_the_interval_is_over(redis_client):
    # Given a publisher on real Redis
    told = Announcements()
    publisher = PreviewPublisher("job-a", RedisPreviewStore(redis_client), told)
    frames = [png(8, 8, (i * 20, 0, 0)) for i in range(10)]
    # When ten frames arrive at once
    for frame in frames:
        publisher.offer(frame, "image/png")
    # Then the first is stored now and only the newest of the rest half a second later
    wait_for(lambda: len(told.items) == 2, 5, what="the trailing frame")
    assert told.items[1][0] - told.items[0][0] >= 0.45
    stored = RedisPreviewStore(redis_client).get("job-a")
    assert stored is not None and stored.data == frames[-1] and stored.mime == "image/png" and stored.seq == 2
    assert [seq for _, seq in told.items] == [1, 2] and publisher.stored == 2
    assert 0 < redis_client.ttl(preview_key("job-a")) <= 3600
    publisher.close()


class TimedStore(RedisPreviewStore):
    """Records when each frame was handed to Redis (the throttle's decision, before the round trip)."""

    def __init__(self, client: object) -> None:
        super().__init__(client)
        self.times: list[float] = []

    def put(self, job_id: str, data: bytes, mime: str) -> int:
        self.times.append(time.monotonic())
        return super().put(job_id, data, mime)


def test_a_steady_stream_is_stored_at_most_twice_per_second(redis_client):
    told = Announcements()
    store = TimedStore(redis_client)
    publisher = PreviewPublisher("job-b", store, told)
    # When frames arrive at 20 per second for two seconds
    end = time.monotonic() + 2.0
    n = 0
    while time.monotonic() < end:
        publisher.offer(png(4, 4, (n % 256, 0, 0)), "image/png")
        n += 1
        time.sleep(0.05)  # the frame rate under test, not a synchronisation
    publisher.close()
    # Then at most 2 per second were stored (never two closer than the interval, give or take
    # thread scheduling), and the stream was not cut off
    times = store.times
    assert n >= 10 and 2 <= len(times) <= 5 and len(times) < n, (n, len(times))
    assert all(b - a >= 0.4 for a, b in zip(times, times[1:], strict=False)), times


def test_a_closed_publisher_drops_the_pending_frame():
    told = Announcements()

    class Store:
        def put(self, job_id: str, data: bytes, mime: str) -> int:
            return 1

    publisher = PreviewPublisher("job-c", Store(), told)  # type: ignore[arg-type]
    publisher.offer(png(4, 4, (1, 2, 3)), "image/png")
    publisher.offer(png(4, 4, (4, 5, 6)), "image/png")
    publisher.close()
    assert len(told.items) == 1


def test_big_frames_are_downscaled_to_jpeg_and_small_ones_kept_as_they_are():
    small = png(64, 64, (10, 20, 30))
    assert shrink(small, "image/png") == (small, "image/png")
    big, mime = shrink(png(1536, 1024, (200, 100, 50)), "image/png") or (b"", "")
    assert mime == "image/jpeg"
    with Image.open(io.BytesIO(big)) as image:
        assert max(image.size) == MAX_SIDE and image.size == (512, 341)
    assert shrink(b"not an image", "image/png") is None
    assert shrink(small, "text/html") is None


def test_report_preview_never_breaks_a_job():
    job = Job(id="j", service="comfyui", payload={})
    job.report_preview(b"\x89PNG...")  # no sink: dropped

    class Broken:
        def offer(self, data: bytes, mime: str) -> None:
            raise RuntimeError("boom")

    job.previews = Broken()
    job.report_preview(b"\x89PNG...", "image/png")


def test_a_jobs_publisher_is_made_on_its_first_frame_and_frames_after_the_end_are_dropped(app, redis_client):
    from types import SimpleNamespace

    from jobqueue.worker.task import JobProgress
    from jobqueue.worker.timers import TimerThread

    timers = TimerThread()
    task = SimpleNamespace(app=app, request=SimpleNamespace(id="job-lazy", hostname="w"), backend=app.backend)
    job = Job(id="job-lazy", service="simulation", payload={})
    runtime = SimpleNamespace(timers=timers, is_given_up=lambda job_id: True)  # progress: not written
    progress = JobProgress(task, runtime, job)  # type: ignore[arg-type]
    try:
        assert not isinstance(progress.previews, PreviewPublisher)  # a job without previews makes none
        frame = png(8, 8, (0, 0, 255))
        job.report_preview(frame, "image/png")
        assert isinstance(progress.previews, PreviewPublisher)
        wait_for(lambda: RedisPreviewStore(redis_client).get("job-lazy") is not None, 5, what="the first frame")
        progress.settle(succeeded=True)
        assert progress.previews is None
        job.report_preview(png(8, 8, (255, 0, 0)), "image/png")  # after the end: dropped
        stored = RedisPreviewStore(redis_client).get("job-lazy")
        assert stored is not None and stored.data == frame and stored.seq == 1
    finally:
        timers.stop()


def test_a_job_that_ends_before_any_frame_never_makes_a_publisher(app):
    from types import SimpleNamespace

    from jobqueue.worker.task import JobProgress
    from jobqueue.worker.timers import TimerThread

    timers = TimerThread()
    task = SimpleNamespace(app=app, request=SimpleNamespace(id="job-none", hostname="w"), backend=app.backend)
    job = Job(id="job-none", service="simulation", payload={})
    runtime = SimpleNamespace(timers=timers, is_given_up=lambda job_id: True)  # progress: not written
    progress = JobProgress(task, runtime, job)  # type: ignore[arg-type]
    progress.settle(succeeded=True)
    job.report_preview(png(8, 8, (0, 255, 0)), "image/png")
    assert progress.previews is None
    timers.stop()
