"""The jobs page pages and sorts on the server: it draws one page of rows (never every job),
shows the exact total, and its pager and sort order ask /api/jobs for the next page. Real
monitor process on a real SQLite store, real headless Chromium."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from jobqueue.shared.names import RUN_JOB_TASK
from monitor.merge.apply import apply
from monitor.store import Store
from tests.helpers import wait_for
from tests.monitor import browser
from tests.monitor.browser import Pages

chromium = browser.chromium
start_monitor = browser.start_monitor

pytestmark = [pytest.mark.chromium, pytest.mark.slow, pytest.mark.timeout(240)]

JOBS = 120
ROW_IDS_JS = "() => [...document.querySelectorAll('#jobs .job-row[data-job-id]')].map((r) => r.dataset.jobId)"


def finished_job(n: int, t0: float) -> list[dict[str, Any]]:
    """Events of job ``job-NNN``: submitted n minutes after t0, ran n/10 s, completed."""
    job_id, at, runtime = f"job-{n:03d}", t0 + n * 60, n / 10
    meta = json.dumps({"service": "simulation", "priority": 5, "queue": "simulation", "submitted_at": at})
    worker = "gpu0@pages"
    return [
        {"type": "task-sent", "uuid": job_id, "name": RUN_JOB_TASK, "kwargs": meta, "queue": "simulation",
         "timestamp": at},
        {"type": "task-started", "uuid": job_id, "hostname": worker, "timestamp": at + 1},
        {"type": "task-succeeded", "uuid": job_id, "hostname": worker, "runtime": runtime, "result": "{}",
         "timestamp": at + 1 + runtime},
    ]


def filled_store(path: Path) -> str:
    """A store holding JOBS finished jobs from two days ago (past repair's start-up look-back)."""
    url = f"sqlite:///{path}"
    store = Store(url)
    t0 = time.time() - 2 * 86400
    try:
        with store.write() as tx:
            for n in range(JOBS):
                for event in finished_job(n, t0):
                    apply(event, tx)
    finally:
        store.close()
    return url


def test_the_jobs_page_draws_one_server_page_with_the_exact_total_and_pages_and_sorts_through_the_api(
        chromium, start_monitor, tmp_path):
    # Given a monitor whose store holds 120 finished jobs
    monitor = start_monitor(JOBQUEUE_MONITOR_DB=filled_store(tmp_path / "filled.db"))
    pages = Pages(chromium, monitor.url)
    try:
        page = pages.open("/jobs")
        # When the page opens: one page of 50 rows, newest first, and the exact total
        page.wait_for_function("() => (document.querySelector('.pager-range') || {}).textContent === '1–50 of 120'")
        rows = page.evaluate(ROW_IDS_JS)
        assert rows == [f"job-{n:03d}" for n in range(119, 69, -1)]
        # When the next page is asked: the next 50 from the server
        page.click(".pager-next")
        page.wait_for_function("() => document.querySelector('.pager-range').textContent === '51–100 of 120'")
        assert page.evaluate(ROW_IDS_JS) == [f"job-{n:03d}" for n in range(69, 19, -1)]
        # ... and the last page holds the remaining 20, with "older" disabled
        page.click(".pager-next")
        page.wait_for_function("() => document.querySelector('.pager-range').textContent === '101–120 of 120'")
        assert page.evaluate(ROW_IDS_JS) == [f"job-{n:03d}" for n in range(19, -1, -1)]
        assert page.is_disabled(".pager-next")
        # When the order changes: back to the first page, in the server's new order
        page.select_option("#sort-by", "submitted:asc")
        page.wait_for_function("() => document.querySelector('.pager-range').textContent === '1–50 of 120'")
        wait_for(lambda: page.evaluate(ROW_IDS_JS)[:1] == ["job-000"], 10, what="oldest first")
        assert page.evaluate(ROW_IDS_JS) == [f"job-{n:03d}" for n in range(50)]
        page.select_option("#sort-by", "runtime:desc")
        wait_for(lambda: page.evaluate(ROW_IDS_JS)[:3] == ["job-119", "job-118", "job-117"], 10,
                 what="longest runtime first")
        assert len(page.evaluate(ROW_IDS_JS)) == 50
        assert not pages.errors
    finally:
        pages.close()
