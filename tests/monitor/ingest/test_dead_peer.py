"""Dead-peer detection: a monitor whose Redis connections silently stop carrying anything (a
proxy between it and Redis stops forwarding without closing, like a dropped NAT entry)
notices within a bound set by JOBQUEUE_REDIS_HEALTH_INTERVAL, reconnects, and its truth repair
recovers the jobs whose events went into the void.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from jobqueue import submit_job
from jobqueue.states import JobStatus
from monitor.ingest.raw_reader import RawEventReader
from tests.blackhole import BlackholeProxy
from tests.helpers import quick, wait_for

pytestmark = pytest.mark.timeout(180)

#: The health interval the tests run with (s): a dead peer must be noticed within ~2× this.
INTERVAL = 1.0


@pytest.fixture
def proxy(redis_url: str) -> Iterator[BlackholeProxy]:
    port = redis.ConnectionPool.from_url(redis_url).connection_kwargs["port"]
    relay = BlackholeProxy(int(port)).start()
    yield relay
    relay.stop()


def test_the_raw_reader_drops_a_silent_connection_within_twice_its_health_interval(proxy, redis_url):
    # Given a raw reader subscribed through the proxy, on an otherwise quiet channel
    db = redis.ConnectionPool.from_url(redis_url).connection_kwargs.get("db", 0)
    got: list[bytes] = []
    subscribed = []
    reader = RawEventReader(f"redis://127.0.0.1:{proxy.port}/{db}", "/quiet-test/*", got.append,
                            on_subscribed=lambda: subscribed.append(time.monotonic()), health_interval=INTERVAL)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            reader.run()
        except Exception as exc:
            outcome["error"] = exc
            outcome["at"] = time.monotonic()

    import threading

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: subscribed, 10, what="the reader to subscribe")
        # (a quiet but live connection survives several intervals: PINGs are answered)
        client = redis.Redis.from_url(redis_url)
        client.publish("/quiet-test/x", b"hello")
        wait_for(lambda: got == [b"hello"], 10, what="a message through the proxy")
        time.sleep(3 * INTERVAL)  # not synchronisation: the stretch of silence under test
        assert "error" not in outcome and reader.last_heard is not None
        assert time.time() - reader.last_heard < 2 * INTERVAL
        # When the proxy silently stops forwarding
        proxy.blackhole()
        frozen_at = time.monotonic()
        # Then the reader gives up on the connection within about twice the interval
        wait_for(lambda: "error" in outcome, 10, what="the reader to notice the dead peer")
        assert isinstance(outcome["error"], redis.ConnectionError)
        assert "dead peer" in str(outcome["error"])
        assert outcome["at"] - frozen_at <= 2 * INTERVAL + 1.0
    finally:
        reader.stop()
        thread.join(10)


def test_a_monitor_behind_a_silent_connection_reconnects_and_repair_recovers_the_gap(
        proxy, settings, start_worker, start_monitor, app):
    # Given a worker on Redis and a monitor whose every Redis connection goes through the proxy
    db = redis.ConnectionPool.from_url(settings.broker_url).connection_kwargs.get("db", 0)
    via_proxy = f"redis://127.0.0.1:{proxy.port}/{db}"
    start_worker("gpu0")
    monitor = start_monitor(broker_url=via_proxy, result_backend=via_proxy,
                            redis_health_interval=str(INTERVAL), monitor_repair_interval="600")
    first = submit_job("simulation", quick("before"), app=app)
    first.wait(timeout=60)
    wait_for(lambda: monitor.get(f"/api/jobs/{first.id}").json().get("status") == "completed", 30,
             what="the monitor to see the first job")
    health = monitor.health()
    assert health is not None
    reconnects, runs = health["collector"]["reconnects"], health["repair"]["runs"]
    assert health["collector"]["last_heard_age"] < 5

    # When the proxy silently drops every open connection, and jobs run meanwhile
    assert proxy.blackhole() >= 1
    frozen_at = time.monotonic()
    gap = [submit_job("simulation", quick(f"gap{n}"), app=app) for n in range(3)]
    for job in gap:
        assert job.wait(timeout=60)["output"].startswith("gap")

    # Then the monitor reconnects within the bound (≈ 2 × interval + backoff)
    def back() -> bool:
        h = monitor.health()
        return bool(h and h["collector"]["reconnects"] > reconnects and h["collector"]["connected"])

    wait_for(back, 30, interval=0.1, what="the monitor to reconnect")
    assert time.monotonic() - frozen_at <= 2 * INTERVAL + 5.0
    health = monitor.health()
    assert health is not None and "dead peer" in (health["collector"]["last_error"] or "")
    # And /healthz says the stream is heard from again
    wait_for(lambda: (monitor.health() or {}).get("collector", {}).get("last_heard_age", 99) < 3 * INTERVAL, 10,
             what="the stream to be heard again")
    # And a repair ran at once (the periodic one is 10 minutes away) and recovered every job of
    # the gap
    def recovered() -> bool:
        return all(monitor.get(f"/api/jobs/{job.id}").json().get("status") == JobStatus.COMPLETED.value
                   for job in gap)

    wait_for(recovered, 45, interval=0.2, what="repair to recover the gap's jobs")
    repaired = wait_for(lambda: ((monitor.health() or {}).get("repair") or {}).get("runs", 0) > runs and
                        monitor.health(), 30, what="the triggered repair pass to finish")
    assert repaired["repair"]["last"]["backend"] >= len(gap)
    # And the live stream works again: a new job shows up
    after = submit_job("simulation", quick("after"), app=app)
    after.wait(timeout=60)
    wait_for(lambda: monitor.get(f"/api/jobs/{after.id}").json().get("status") == "completed", 30,
             what="a job after the reconnect")
