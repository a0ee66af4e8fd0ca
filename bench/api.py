"""API latency: ``/api/state`` and ``/api/jobs?limit=100`` (exact totals, also filtered and
sorted) with 10k, 100k and 1M jobs stored; with ``--chromium`` also the time the jobs page
takes in headless Chromium to show its first page of rows and the exact total.

How the store is filled: 1,000 template jobs (plus 50 workers with heartbeats and connector
statuses, 200 unfinished jobs: queued and processing) are built from realistic events through
the monitor's own write path (:meth:`monitor.store.Store.write` + :func:`monitor.merge.apply.apply`),
then the finished template rows are copied in bulk (SQL ``INSERT ... SELECT`` on the store's
``jobs`` table, new ids, finish times spread back in time) up to each size. The number of
unfinished jobs stays 200 (a fleet's backlog does not grow with history). The monitor
(``python -m monitor.server``) then serves the file and one client times ``--requests``
sequential requests per endpoint.

    python -m bench.api --sizes 10000,100000,1000000 --requests 200 [--chromium]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import text, update
from sqlalchemy.orm import Session

from bench.common import (
    RedisServer,
    bench_settings,
    fmt_table,
    free_port,
    monitor_process,
    percentile,
    wait_http,
)
from jobqueue.shared.names import CONNECTOR_STATUS, RUN_JOB_TASK, TASK_PROGRESS
from monitor.merge.apply import apply
from monitor.store import Job, Store, Worker, job_counts

#: Finished template jobs built through the apply path.
TEMPLATE_JOBS = 1000
#: Unfinished jobs (queued + processing) kept at every size.
OPEN_JOBS = 200
WORKERS = 50


def _events_for_job(job_id: str, worker: str, t0: float, *, finish: bool, start: bool = True) -> list[dict[str, Any]]:
    meta = json.dumps({"service": "simulation", "priority": 5, "queue": "simulation", "workflow_id": None,
                       "step": None, "timeout": None, "submitted_at": t0})
    events: list[dict[str, Any]] = [
        {"type": "task-sent", "uuid": job_id, "name": RUN_JOB_TASK, "args": "()", "kwargs": meta, "retries": 0,
         "queue": "simulation", "hostname": "client@bench", "timestamp": t0},
    ]
    if not start:
        return events
    events += [
        {"type": "task-received", "uuid": job_id, "name": RUN_JOB_TASK, "args": "()", "kwargs": meta,
         "retries": 0, "hostname": worker, "timestamp": t0 + 0.01},
        {"type": "task-started", "uuid": job_id, "hostname": worker, "timestamp": t0 + 0.02},
    ]
    for step in range(1, 11 if finish else 5):
        events.append({"type": TASK_PROGRESS, "uuid": job_id, "service": "simulation", "percent": step * 10.0,
                       "step": step, "total_steps": 10, "message": f"step {step}/10", "node": None,
                       "eta_seconds": (10 - step) * 0.1, "attempt": 0, "hostname": worker,
                       "timestamp": t0 + 0.02 + step * 0.1})
    if finish:
        result = {"job_id": job_id, "service": "simulation", "worker": worker, "attempt": 0, "output": "ok"}
        events.append({"type": "task-succeeded", "uuid": job_id, "result": repr(result), "runtime": 1.0,
                       "hostname": worker, "timestamp": t0 + 1.1})
    return events


def _worker_events(now: float) -> list[dict[str, Any]]:
    events = []
    for n in range(WORKERS):
        worker = f"gpu{n % 4}@benchvm{n // 4:02d}"
        events.append({"type": "worker-online", "hostname": worker, "freq": 2.0, "sw_ver": "5.7.0",
                       "timestamp": now, "active": 0, "processed": 0, "loadavg": [0.1, 0.1, 0.1]})
        events.append({"type": CONNECTOR_STATUS, "worker": worker, "machine_id": worker.split("@")[1],
                       "gpu": n % 4, "service": "simulation", "status": "idle", "message": "", "seq": 1,
                       "details": {}, "connectors": ["simulation"], "queues": [f"gpu{n % 4}", "simulation"],
                       "beat": False, "interval": 15.0, "hostname": worker, "timestamp": now})
    return events


def build_template(store: Store, now: float) -> None:
    """Apply realistic events for the template and open jobs through the store's write path."""
    events = _worker_events(now)
    for n in range(TEMPLATE_JOBS):
        worker = f"gpu{n % 4}@benchvm{(n % WORKERS) // 4:02d}"
        events += _events_for_job(f"tpl{uuid.uuid4().hex}", worker, now - 3600 + n, finish=True)
    for n in range(OPEN_JOBS):
        worker = f"gpu{n % 4}@benchvm{(n % WORKERS) // 4:02d}"
        events += _events_for_job(f"open-{uuid.uuid4()}", worker, now - 60 + n * 0.1, finish=False,
                                  start=n % 2 == 0)
    for start in range(0, len(events), 500):
        with store.write(now) as tx:
            for event in events[start:start + 500]:
                apply(event, tx)


def grow(store: Store, target: int) -> int:
    """Copy finished template rows (new ids, earlier finish times) until ``target`` jobs exist."""
    columns = [c.name for c in Job.__table__.columns]
    select_cols = []
    for name in columns:
        if name == "id":
            select_cols.append("id || '-' || :k")
        elif name in ("finished_at", "submitted_at", "received_at", "started_at", "updated_at"):
            select_cols.append(f"{name} - :k * 3600.0")
        else:
            select_cols.append(name)
    sql = text(f"INSERT INTO jobs ({', '.join(columns)}) SELECT {', '.join(select_cols)} "
               "FROM jobs WHERE id LIKE 'tpl%' AND id NOT LIKE 'tpl%-%' LIMIT :n")
    with store.engine.begin() as conn:
        have = conn.execute(text("SELECT count(*) FROM jobs")).scalar_one()
        # Copy batch k adds the suffix "-k" to the 35-character template id: go on after the last.
        last = conn.execute(text("SELECT max(CAST(substr(id, 37) AS INTEGER)) FROM jobs WHERE id LIKE 'tpl%-%'"))
        k = int(last.scalar_one() or 0) + 1
        while have < target:
            n = min(TEMPLATE_JOBS, target - have)
            inserted = conn.execute(sql, {"k": k, "n": n}).rowcount
            if not inserted:
                raise RuntimeError("no template rows to copy")
            have += inserted
            k += 1
        # The copies bypass the write path: set the workers' job counters (``ended``/``failed``,
        # kept in the workers row by the store) to what a monitor holding these rows would have.
        with Session(conn) as session:
            for name, (ended, failed) in job_counts(session).items():
                session.execute(update(Worker).where(Worker.name == name).values(ended=ended, failed=failed))
        # Count again: the figure printed is what the table holds, not what we meant to add.
        return int(conn.execute(text("SELECT count(*) FROM jobs")).scalar_one())


def time_endpoint(url: str, requests_n: int) -> tuple[float, float, int]:
    """p50 and p99 (ms) of ``requests_n`` sequential GETs, and the last body's size."""
    session = requests.Session()
    session.get(url, timeout=120).raise_for_status()  # warm: caches, first connection
    times = []
    size = 0
    for _ in range(requests_n):
        started = time.perf_counter()
        response = session.get(url, timeout=120)
        times.append((time.perf_counter() - started) * 1000.0)
        response.raise_for_status()
        size = len(response.content)
    return percentile(times, 50), percentile(times, 99), size


#: Endpoints timed at every size.
ENDPOINTS = ("/api/state", "/api/jobs?limit=100", "/api/jobs?limit=100&state=completed",
             "/api/jobs?limit=100&sort=finished&order=asc&offset=5000")
#: Debian's Chromium and the flags it needs headless as root.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def time_jobs_page(url: str, stored: int, loads: int = 5) -> tuple[float, float, int]:
    """Median and worst ms from navigation to the jobs page showing its first page of rows
    and the exact total, and how many rows it drew."""
    from playwright.sync_api import sync_playwright

    times = []
    drawn = 0
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            for _ in range(loads + 1):  # the first load warms the caches
                started = time.perf_counter()
                page.goto(url + "/jobs")
                page.wait_for_function(
                    "(total) => document.querySelectorAll('#jobs .job-row[data-job-id]').length > 0 && "
                    "(document.querySelector('#pager .pager-range') || {}).textContent?.endsWith('of ' + total)",
                    arg=str(stored), timeout=120_000)
                times.append((time.perf_counter() - started) * 1000.0)
                drawn = page.evaluate("document.querySelectorAll('#jobs .job-row[data-job-id]').length")
        finally:
            browser.close()
    times = times[1:]
    return percentile(times, 50), max(times), drawn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--chromium", action="store_true", help="also time the jobs page in Chromium")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-api-"))
    server = RedisServer().start()
    settings = bench_settings(server.url(0), workdir, monitor_db=f"sqlite:///{workdir / 'api.db'}",
                              monitor_keep_jobs=100_000_000, monitor_keep_seconds=10 * 365 * 86400.0)
    rows = []
    try:
        store = Store.from_settings(settings)
        build_template(store, time.time())
        for size in (int(s) for s in args.sizes.split(",")):
            started = time.perf_counter()
            stored = grow(store, size)
            print(f"store holds {stored:,} jobs (grown in {time.perf_counter() - started:.1f} s)", flush=True)
            port = free_port()
            monitor = monitor_process(settings, port, workdir / f"monitor-{size}.log").start()
            try:
                wait_http(f"http://127.0.0.1:{port}/healthz", monitor, timeout=300)
                for path in ENDPOINTS:
                    p50, p99, body = time_endpoint(f"http://127.0.0.1:{port}{path}", args.requests)
                    rows.append({"jobs stored": stored, "endpoint": path, "p50 ms": p50, "p99 ms": p99,
                                 "body KB": body / 1024.0})
                    print(fmt_table(rows[-1:], list(rows[-1])), flush=True)
                if args.chromium:
                    total = requests.get(f"http://127.0.0.1:{port}/api/jobs?limit=1", timeout=120).json()["total"]
                    median, worst, drawn = time_jobs_page(f"http://127.0.0.1:{port}", total)
                    rows.append({"jobs stored": stored, "endpoint": f"/jobs in Chromium ({drawn} rows drawn)",
                                 "p50 ms": median, "p99 ms": worst, "body KB": 0.0})
                    print(fmt_table(rows[-1:], list(rows[-1])), flush=True)
            finally:
                monitor.stop()
        store.close()
    finally:
        server.stop()
    print()
    print(fmt_table(rows, list(rows[0])))
    print("target: p50 <= 20 ms at 100k jobs, sub-linear growth")
    return 0


if __name__ == "__main__":
    sys.exit(main())
