"""A job goes through a real worker process and a real Redis."""

from __future__ import annotations

from jobqueue.client import submit_job
from jobqueue.states import JobStatus


def test_a_simulation_job_runs_on_a_real_worker_and_reports_progress(app, start_worker):
    # Given a real worker for gpu0
    start_worker("gpu0")
    seen: list[float] = []
    # When a five-step job is submitted and waited on
    handle = submit_job("simulation", {"steps": 5, "step_seconds": 0.2, "output": "done"}, app=app)
    result = handle.wait(timeout=30, on_progress=lambda p: seen.append(p["percent"]))
    # Then the result arrives, after at least three increasing progress updates
    assert result["output"] == "done"
    assert handle.status() == JobStatus.COMPLETED
    assert len(seen) >= 3 and seen == sorted(seen) and len(set(seen)) == len(seen)
