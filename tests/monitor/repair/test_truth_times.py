"""Right the first time (issue 28, point 3): a job's events carry the very times its record in
the result backend holds, so a monitor that saw them needs no correction on a normal job and a
``corrected`` entry again means something went wrong. Real Redis, a real worker, a real monitor."""

from __future__ import annotations

from typing import Any

import pytest

from jobqueue.client.jobs import submit_job
from tests.helpers import wait_for
from tests.monitor.repair.test_truth import QUICK, job_of

pytestmark = pytest.mark.timeout(180)


def _runs(monitor: Any) -> int:
    return int(((monitor.health() or {}).get("repair") or {}).get("runs") or 0)


def test_a_normal_job_gets_no_corrected_entry_from_repair(app, start_worker, start_monitor):
    # Given a monitor repairing every second beside a worker
    monitor = start_monitor("m.db", monitor_repair_interval="1")
    start_worker("gpu0")
    # When jobs complete, one with a deeply nested result, and one fails
    handles = [submit_job("simulation", QUICK, app=app) for _ in range(3)]
    handles.append(submit_job("simulation", {"steps": 3, "step_seconds": 0.05, "fail_at_step": 2}, app=app))
    # (and one whose result nests deeper than Celery's event repr keeps, as a ComfyUI job's outputs do)
    deep = {"outputs": {"9": {"images": [{"filename": "a.png", "meta": {"size": [512, 512]}}]}}}
    handles.append(submit_job("simulation", {**QUICK, "output": deep}, app=app))
    for handle in handles:
        wait_for(lambda h=handle: (job_of(monitor, h.id) or {}).get("status") in ("completed", "failed"), 60,
                 what=f"job {handle.id} to end on the monitor")
    # And repair has gone over them twice since
    seen = _runs(monitor)
    wait_for(lambda: _runs(monitor) >= seen + 2, 30, what="two more repair passes")
    # Then no job's timeline holds a correction, and its times are the record's
    for handle in handles:
        job = job_of(monitor, handle.id) or {}
        corrected = [e for e in job["events"] if e["type"] == "corrected"]
        assert corrected == [], (handle.id, corrected)
        assert job["received_at"] <= job["started_at"] < job["finished_at"]
        assert job["runtime"] == pytest.approx(job["finished_at"] - job["started_at"], abs=1e-5)
    # And the deep result was whole from its event on
    assert (job_of(monitor, handles[-1].id) or {})["result"]["output"] == deep
