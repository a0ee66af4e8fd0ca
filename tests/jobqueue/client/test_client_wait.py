"""JobHandle.wait(): pushed by the result backend's pub/sub, read again as a safety net,
polled where there is no pub/sub (real Redis; states stored as a worker stores them)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from celery import states as celery_states

from jobqueue.client import jobs as client
from jobqueue.client.jobs import JobHandle
from jobqueue.errors import JobFailed, WaitTimeout
from jobqueue.shared.submissions import record_submitted
from jobqueue.states import PROGRESS
from jobqueue.transport.app import create_app
from tests.helpers import wait_for


def _submitted(app: Any, job_id: str) -> JobHandle:
    """A handle on a job recorded as submitted (no worker: the test stores its states)."""
    record_submitted(app, [job_id])
    return JobHandle(job_id, app)


def _subscribers(app: Any, redis_client: Any, job_id: str) -> int:
    channel = app.backend.get_key_for_task(job_id)  # bytes
    return int(dict(redis_client.pubsub_numsub(channel)).get(channel, 0))


def _in_thread(target: Any) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_wait_returns_a_result_stored_before_it_started(app):
    handle = _submitted(app, "ended-early")
    app.backend.store_result("ended-early", {"output": "x"}, celery_states.SUCCESS)
    assert handle.wait(timeout=5) == {"output": "x"}


def test_every_progress_change_reaches_the_callback_in_order_and_none_after_the_result(app, redis_client):
    # Given a client waiting on a job, following its progress
    handle = _submitted(app, "followed")
    seen: list[dict[str, Any]] = []

    def worker() -> None:
        # (a worker that starts once the client is subscribed)
        wait_for(lambda: _subscribers(app, redis_client, "followed") >= 1, 10, what="the client to subscribe")
        app.backend.store_result("followed", {"step": 1, "percent": 25.0}, PROGRESS)
        # (the rest once the client took the first step: after subscribing it reads the stored
        # state once, and a job that had ended by then is seen ended, its progress skipped)
        wait_for(lambda: len(seen) >= 1, 10, what="the first step to reach the callback")
        for step in (2, 2, 3):  # the repeated step is no change
            app.backend.store_result("followed", {"step": step, "percent": step * 25.0}, PROGRESS)
        app.backend.store_result("followed", {"output": "done"}, celery_states.SUCCESS)
        # (a late progress message, as a stray duplicate could publish)
        late = {"status": PROGRESS, "result": {"step": 4, "percent": 100.0}, "task_id": "followed"}
        redis_client.publish(app.backend.get_key_for_task("followed"), app.backend.encode(late))

    thread = _in_thread(worker)
    # When it waits
    started = time.monotonic()
    result = handle.wait(timeout=30, on_progress=seen.append)
    thread.join(10)
    # Then each change arrived once, in order, then the result, long before any re-read
    assert result == {"output": "done"}
    assert [p["step"] for p in seen] == [1, 2, 3]
    assert time.monotonic() - started < client.REREAD_INTERVAL
    # And the subscription is gone
    wait_for(lambda: _subscribers(app, redis_client, "followed") == 0, 5, what="the unsubscribe")


def test_a_cancel_stored_while_waiting_ends_the_wait_as_cancelled(app, redis_client):
    handle = _submitted(app, "cancelled-live")

    def cancel() -> None:
        wait_for(lambda: _subscribers(app, redis_client, "cancelled-live") >= 1, 10, what="the client to subscribe")
        JobHandle("cancelled-live", app).cancel()

    thread = _in_thread(cancel)
    with pytest.raises(JobFailed) as caught:
        handle.wait(timeout=30)
    thread.join(10)
    assert caught.value.status == "cancelled"


def test_a_result_whose_message_was_lost_is_found_by_the_next_re_read(app, redis_client, monkeypatch):
    # Given a short re-read interval, and a result stored without its pub/sub message (as
    # when the subscription was reconnecting)
    monkeypatch.setattr(client, "REREAD_INTERVAL", 0.3)
    handle = _submitted(app, "unannounced")
    record = {"status": celery_states.SUCCESS, "result": {"output": "quiet"}, "traceback": None,
              "children": [], "date_done": None, "task_id": "unannounced"}

    def store_silently() -> None:
        wait_for(lambda: _subscribers(app, redis_client, "unannounced") >= 1, 10, what="the client to subscribe")
        redis_client.set(app.backend.get_key_for_task("unannounced"), app.backend.encode(record))

    thread = _in_thread(store_silently)
    # Then wait() returns it all the same
    assert handle.wait(timeout=10) == {"output": "quiet"}
    thread.join(10)


def test_waiting_too_long_raises_wait_timeout_and_leaves_no_subscription(app, redis_client):
    handle = _submitted(app, "never-runs")
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match="still queued after 0.5 s"):
        handle.wait(timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 3.0
    wait_for(lambda: _subscribers(app, redis_client, "never-runs") == 0, 5, what="the unsubscribe")


def test_a_result_backend_without_pub_sub_is_polled(settings):
    # Given an app whose result backend has no pub/sub (Celery's in-memory cache backend)
    app = create_app(settings)
    app.conf.result_backend = "cache+memory://"
    try:
        assert not getattr(app.backend, "is_async", False)
        handle = JobHandle("polled", app)
        handle.submitted = True
        seen: list[dict[str, Any]] = []

        def worker() -> None:
            app.backend.store_result("polled", {"step": 1}, PROGRESS)
            wait_for(lambda: bool(seen), 10, what="the progress to be seen")
            app.backend.store_result("polled", {"output": "polled"}, celery_states.SUCCESS)

        thread = _in_thread(worker)
        # Then wait() sees the progress and the result
        assert handle.wait(timeout=10, on_progress=seen.append) == {"output": "polled"}
        thread.join(10)
        assert seen == [{"step": 1}]
    finally:
        app.close()


def test_a_wait_outlives_a_redis_restart_and_returns_the_result_stored_after_it(settings, tmp_path, monkeypatch):
    # Given a client waiting on a job, on a Redis of its own that keeps its data on restart,
    # re-reading the state often (so a re-read falls into the restart)
    from bench.common import RedisServer  # the bench's redis-server wrapper (private port)

    monkeypatch.setattr(client, "REREAD_INTERVAL", 0.05)

    (tmp_path / "redis").mkdir()
    server = RedisServer(appendonly=True, workdir=tmp_path / "redis").start()
    url = server.url(0)
    app = create_app(settings.model_copy(update={"broker_url": url, "result_backend": url})
                     if hasattr(settings, "model_copy") else _with_url(settings, url))
    try:
        handle = _submitted(app, "restarted")
        watcher = app.backend.client

        def restart_then_finish() -> None:
            wait_for(lambda: _subscribers(app, watcher, "restarted") >= 1, 10, what="the client to subscribe")
            # When Redis restarts under the subscription, and the job ends after that
            server.restart()
            wait_for(lambda: _answers(watcher), 20, what="redis to be back")
            app.backend.store_result("restarted", {"output": "after"}, celery_states.SUCCESS)

        thread = _in_thread(restart_then_finish)
        # Then wait() returns the result
        assert handle.wait(timeout=30) == {"output": "after"}
        thread.join(10)
    finally:
        app.close()
        server.stop()


def _answers(client_: Any) -> bool:
    try:
        return bool(client_.ping())
    except Exception:
        return False


def _with_url(settings: Any, url: str) -> Any:
    import dataclasses

    return dataclasses.replace(settings, broker_url=url, result_backend=url)
