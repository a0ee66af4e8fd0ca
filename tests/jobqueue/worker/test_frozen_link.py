"""A frozen broker link is noticed (jobqueue/worker/linkwatch.py): a worker whose Redis
connections go through a proxy that silently stops forwarding (no FIN, no RST; the kernel still
ACKs) notices within a bound set by JOBQUEUE_REDIS_HEALTH_INTERVAL, reconnects and takes jobs
again; a job it was running is neither lost nor run twice. Real subprocess workers, real Redis.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from jobqueue import submit_job
from jobqueue.states import JobStatus
from jobqueue.worker.linkwatch import CHECKS_PER_INTERVAL, SILENT_INTERVALS, SilenceWatch
from tests.blackhole import BlackholeProxy
from tests.helpers import quick, wait_for

pytestmark = pytest.mark.timeout(180)

#: The health interval the workers run with (s).
INTERVAL = 1.0
#: Noticed within (s): the watch's bound and its look period, plus a reconnect on a slow,
#: shared machine (kombu's own connect, the event loop blocked by one socket timeout).
NOTICE_BOUND = (SILENT_INTERVALS + 1 / CHECKS_PER_INTERVAL) * INTERVAL + 10.0


@pytest.fixture
def proxy(redis_url: str) -> Iterator[BlackholeProxy]:
    port = redis.ConnectionPool.from_url(redis_url).connection_kwargs["port"]
    relay = BlackholeProxy(int(port)).start()
    yield relay
    relay.stop()


def via(proxy: BlackholeProxy, redis_url: str) -> str:
    db = redis.ConnectionPool.from_url(redis_url).connection_kwargs.get("db", 0)
    return f"redis://127.0.0.1:{proxy.port}/{db}"


def answers_ping(app: Any, node: str) -> bool:
    return any(node in reply for reply in app.control.ping(destination=[node], timeout=0.5) or [])


def times_received(worker: Any, job_id: str) -> int:
    return len(re.findall(rf"Task jobqueue\.run_job\[{job_id}\] received", worker.log_text()))


def test_the_silence_watch_counts_only_while_a_reply_is_due_and_fires_past_its_bound():
    now = [100.0]
    watch = SilenceWatch(2.0, clock=lambda: now[0])
    # A busy consumer (no BRPOP due) is never silent, however long
    assert watch.frozen(False, 50.0) is None
    now[0] = 200.0
    assert watch.frozen(False, 50.0) is None
    # Once a reply is due, the count starts then, not at the last reply long ago
    assert watch.frozen(True, 50.0) is None
    now[0] = 201.5
    assert watch.frozen(True, 200.5) is None  # answered meanwhile
    now[0] = 202.6
    assert watch.frozen(True, 200.5) == pytest.approx(2.1)
    # After firing, the next connection gets a count of its own
    assert watch.frozen(True, 200.5) is None


@pytest.mark.slow
def test_an_idle_worker_behind_a_frozen_link_notices_reconnects_and_takes_jobs_again(
        proxy, redis_url, start_worker, app):
    # Given an idle worker whose every Redis connection goes through the proxy
    worker = start_worker("gpu0", broker_url=via(proxy, redis_url), result_backend=via(proxy, redis_url),
                          redis_health_interval=str(INTERVAL))
    assert answers_ping(app, worker.node_name)
    # When the proxy silently freezes every open connection
    assert proxy.blackhole() >= 1
    frozen_at = time.monotonic()
    # Then the worker notices, reconnects (new connections relay) and answers again, in bound
    wait_for(lambda: answers_ping(app, worker.node_name), 60, interval=0.2, what="the worker to reconnect")
    assert time.monotonic() - frozen_at <= NOTICE_BOUND, worker.log_text()[-3000:]
    assert "Connection to broker lost" in worker.log_text()
    # And it takes jobs again
    job = submit_job("simulation", quick("after-freeze"), app=app)
    assert job.wait(timeout=30)["output"] == "after-freeze"


@pytest.mark.slow
def test_a_job_running_through_a_frozen_link_completes_once_and_the_worker_reconnects(
        proxy, redis_url, settings, start_worker, app):
    # Given a worker behind the proxy running a 6 s job
    worker = start_worker("gpu0", broker_url=via(proxy, redis_url), result_backend=via(proxy, redis_url),
                          redis_health_interval=str(INTERVAL))
    job = submit_job("simulation", {"steps": 24, "step_seconds": 0.25, "output": "through"}, app=app)
    wait_for(lambda: job.status() == JobStatus.PROCESSING, 30, what="the job to start")
    # When the link freezes in the middle of it
    assert proxy.blackhole() >= 1
    # Then the job completes (its lease renewed and its end stored through new connections)
    assert job.wait(timeout=60)["output"] == "through"
    # And the worker reconnects its consumer and takes jobs again
    wait_for(lambda: answers_ping(app, worker.node_name), 60, interval=0.2, what="the worker to reconnect")
    after = submit_job("simulation", quick("next"), app=app)
    assert after.wait(timeout=30)["output"] == "next"
    # And the job was acked: nothing is left for the restore sweep to hand out again
    client = redis.Redis.from_url(redis_url)
    wait_for(lambda: client.hlen("unacked") == 0, 30, what="every message to be acked")
    # (one visibility timeout and a sweep later, the job still ran once: not run twice)
    time.sleep(settings.visibility_timeout + 2 * settings.lease_interval)  # the window under test
    assert times_received(worker, job.id) == 1
    assert app.AsyncResult(job.id).result["attempt"] == 0
