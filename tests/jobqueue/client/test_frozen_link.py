"""JobHandle.wait() behind a frozen link (jobqueue/transport/result_watch.py): a client whose Redis
connections go through a proxy that silently stops forwarding notices its dead result
subscription within a bound set by JOBQUEUE_REDIS_HEALTH_INTERVAL, subscribes again, and gets
the job's progress and result. Real worker, real Redis, real proxy."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from jobqueue import submit_job
from jobqueue.config import Settings
from jobqueue.transport.app import create_app
from jobqueue.transport.redis_health import socket_timeout
from jobqueue.transport.result_watch import check_subscription
from tests.blackhole import BlackholeProxy
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(120)

INTERVAL = 1.0
#: Progress flows again within (s): the failed re-read's socket timeout, two re-reads (2 s each),
#: and slack for a shared machine.
RESUME_BOUND = socket_timeout(INTERVAL) + 2 * 2.0 + 4.0


@pytest.fixture
def proxied_app(redis_url: str, settings: Settings) -> Iterator[Any]:
    port = redis.ConnectionPool.from_url(redis_url).connection_kwargs["port"]
    db = redis.ConnectionPool.from_url(redis_url).connection_kwargs.get("db", 0)
    relay = BlackholeProxy(int(port)).start()
    via = f"redis://127.0.0.1:{relay.port}/{db}"
    app = create_app(settings.model_copy(update={"broker_url": via, "result_backend": via,
                                                 "redis_health_interval": INTERVAL}))
    app.proxy = relay
    yield app
    app.close()
    relay.stop()


def test_a_backend_without_a_subscription_has_nothing_to_check(app):
    assert check_subscription(app.backend) is False
    assert check_subscription(object()) is False


@pytest.mark.slow
def test_wait_notices_a_frozen_subscription_subscribes_again_and_gets_progress_and_result(
        start_worker, proxied_app):
    # Given a worker (direct link) running a 16 s job that reports every 0.25 s, and a client
    # following it through the proxy
    start_worker("gpu0")
    job = submit_job("simulation", {"steps": 64, "step_seconds": 0.25, "output": "seen"}, app=proxied_app)
    seen: list[tuple[float, Any]] = []
    outcome: dict[str, Any] = {}

    def follow() -> None:
        try:
            outcome["result"] = job.wait(timeout=90, on_progress=lambda p: seen.append((time.monotonic(), p["step"])))
        except Exception as exc:  # reported below
            outcome["error"] = exc

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    wait_for(lambda: len(seen) >= 3, 30, what="progress through the proxy")
    # When the proxy silently freezes every open connection
    assert proxied_app.proxy.blackhole() >= 1
    frozen_at = time.monotonic()
    # Then progress arrives again within the bound (a new subscription), long before the end
    wait_for(lambda: any(at > frozen_at for at, _ in seen), 30, interval=0.1, what="progress after the freeze")
    resumed = min(at for at, _ in seen if at > frozen_at)
    assert resumed - frozen_at <= RESUME_BOUND
    # And wait() returns the result
    thread.join(90)
    assert outcome.get("result", {}).get("output") == "seen", outcome
    steps = [step for _, step in seen]
    assert steps == sorted(steps)  # in order across the new subscription
