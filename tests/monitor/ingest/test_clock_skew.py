"""Whatever the workers' clocks say (issue 28, point 3): a worker whose clock runs 400 s ahead
is shown online while it works, its job's times are on the monitor's clock (no queue wait
that never happened, no correction by repair), and its offset is on its card and in /metrics.
The worker is real: a ``sitecustomize`` on its ``PYTHONPATH`` shifts its ``time.time``, the
clock every Celery and jobqueue timestamp is read from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobqueue.client.jobs import submit_job
from monitor.ingest.clocks import ClockSkew
from tests.conftest import settings_env
from tests.helpers import WorkerProcess, child_env, wait_for
from tests.monitor import browser
from tests.monitor.repair.test_truth import QUICK, job_of

pytestmark = pytest.mark.timeout(180)
chromium = browser.chromium

SKEW = 400.0
SITECUSTOMIZE = """
import os
import time

_real_time = time.time
_skew = float(os.environ.get("SKEWED_CLOCK_SECONDS") or 0)
time.time = lambda: _real_time() + _skew
"""


@pytest.fixture
def skewed_worker(settings: Any, app: Any, tmp_path: Path) -> Any:
    """A real worker (gpu0) whose clock runs :data:`SKEW` s ahead."""
    shim = tmp_path / "skewed"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = child_env(settings_env(settings), PYTHONPATH=str(shim), SKEWED_CLOCK_SECONDS=str(SKEW))
    worker = WorkerProcess(env, queues="gpu0", log_path=tmp_path / "skewed-worker.log").start()
    try:
        yield worker.wait_ready(app)
    finally:
        worker.stop()


def test_a_worker_whose_clock_runs_400_s_ahead_is_seen_working_on_the_monitors_clock(
        app, start_monitor, skewed_worker, chromium):
    # Given a monitor and a worker whose clock runs 400 s ahead
    monitor = start_monitor("m.db", monitor_repair_interval="1")

    def card() -> dict[str, Any]:
        workers = {w["name"]: w for w in monitor.get("/api/workers").json()["workers"]}
        return workers.get(skewed_worker.node_name) or {}

    # Then it is online, with its offset on its card
    shown = wait_for(lambda: (c := card()).get("status") == "online" and c.get("clock_skew") and c, 30,
                     what="the skewed worker online with its clock offset")
    assert shown["clock_skew"] == pytest.approx(SKEW, abs=1.0)
    # When it runs a job
    handle = submit_job("simulation", QUICK, app=app)
    done = wait_for(lambda: (j := job_of(monitor, handle.id)) and j["status"] == "completed" and j, 30,
                    what="the job completed on the monitor")
    # Then the job's times are on the monitor's clock: no 400 s queue wait
    assert 0 <= done["received_at"] - done["submitted_at"] < 5, done
    assert done["received_at"] <= done["started_at"] < done["finished_at"] < done["submitted_at"] + 30
    # And repair, reading the times the worker's clock wrote, corrects nothing
    runs = int(monitor.health()["repair"]["runs"])
    wait_for(lambda: int(monitor.health()["repair"]["runs"]) >= runs + 2, 30, what="two more repair passes")
    again = job_of(monitor, handle.id) or {}
    assert [e for e in again["events"] if e["type"] == "corrected"] == []
    assert again["received_at"] == pytest.approx(done["received_at"], abs=0.01)
    # And nothing of its was refused for its clock, and /metrics shows the offset
    writer = monitor.health()["collector"]["writer"]
    assert writer.get("refused_timestamp", 0) == 0, writer
    metrics = monitor.get("/metrics").text
    line = next(x for x in metrics.splitlines()
                if x.startswith(f'jobqueue_worker_clock_skew_seconds{{worker="{skewed_worker.node_name}"}}'))
    assert float(line.split()[-1]) == pytest.approx(SKEW, abs=1.0)
    # And its card on the fleet page says how far ahead its clock runs
    context = chromium.new_context(viewport=browser.LAPTOP)
    try:
        page = context.new_page()
        page.goto(f"{monitor.url}/")
        clock = page.wait_for_selector(f"[data-worker='{skewed_worker.node_name}'] dd.clock-skew.warn")
        assert clock is not None and clock.inner_text().startswith("400.") and "ahead" in clock.inner_text()
    finally:
        context.close()


def test_one_forged_heartbeat_does_not_move_a_workers_clock():
    # Given a worker whose heartbeats arrive 5-20 ms after they were sent
    clocks = ClockSkew()
    for i, delay in enumerate((0.02, 0.005, 0.01)):
        clocks.correct({"type": "worker-heartbeat", "hostname": "w", "timestamp": 1000.0 + 2 * i}, 1000.0 + 2 * i + delay)
    # When someone forges one heartbeat a year ahead
    clocks.correct({"type": "worker-heartbeat", "hostname": "w", "timestamp": 2000.0 + 365 * 86400}, 2000.0)
    # Then the estimate stays the worker's, and its events keep their times
    assert clocks.offset("w") == pytest.approx(-0.005)
    event = {"type": "worker-offline", "hostname": "w", "timestamp": 2100.0 + 365 * 86400}
    clocks.correct(event, 2100.0)
    assert event["timestamp"] == 2100.0 + 365 * 86400
