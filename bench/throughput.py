"""End-to-end throughput: no-op jobs through jobqueue vs a plain Celery no-op task.

* **jobqueue**: ``submit_job("simulation", {"steps": 0})`` → ``celery -A jobqueue worker -Q
  gpu<N>`` (our settings: acks late, prefetch 1, task events and ``task-sent`` on, the
  lease, connector status) → result in the backend, with the monitor (``jobqueue monitor``)
  consuming the event stream at the same time.
* **plain Celery**: ``bench.noop`` (:mod:`bench.plain_app`) → ``celery -A bench.plain_app
  worker`` with Celery's stock settings.

Both use the same private Redis, the same number of workers and the same pool (threads,
concurrency 1 per worker, like one jobqueue worker per GPU). Each side is timed from the first
submit to the last result stored; the table reports jobs/s and the ratio (target >= 0.8x).

    python -m bench.throughput --jobs 2000 --workers 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from celery import states as celery_states

from bench.chaos.drill import Fleet, backend_states
from bench.common import (
    Process,
    RedisServer,
    bench_settings,
    child_env,
    fmt_table,
    free_port,
    monitor_process,
    wait_http,
    wait_until,
)
from jobqueue.celery_app import create_app
from jobqueue.client import submit_job


def _wait_done(app: Any, ids: list[str], timeout: float) -> float:
    """Poll the result backend until every id has a final state; return when that happened."""
    remaining = list(ids)

    def all_done() -> bool:
        nonlocal remaining
        states = backend_states(app, remaining)
        remaining = [i for i, s in states.items() if s not in celery_states.READY_STATES]
        return not remaining

    wait_until(all_done, timeout, interval=0.02, what=f"{len(ids)} results")
    return time.perf_counter()


def _command_calls(url: str) -> dict[str, int]:
    """Redis's own count of calls per command (``INFO commandstats``) so far."""
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def _calls_between(url: str, before: dict[str, int]) -> dict[str, int]:
    after = _command_calls(url)
    return {name: n - before.get(name, 0) for name, n in after.items() if n - before.get(name, 0) > 0}


def run_jobqueue(url: str, workdir: Path, jobs: int, workers: int, monitor: bool) -> dict[str, Any]:
    settings = bench_settings(url, workdir)
    app = create_app(settings)
    fleet = Fleet(app, settings, workdir, size=workers)
    mon: Process | None = None
    try:
        if monitor:
            port = free_port()
            mon = monitor_process(settings, port, workdir / "monitor.log").start()
            wait_http(f"http://127.0.0.1:{port}/healthz", mon)
        fleet.start_all()
        submit_job("simulation", {"steps": 0}, app=app).wait(timeout=60)  # warm: connections, queues
        calls = _command_calls(url)
        started = time.perf_counter()
        ids = [submit_job("simulation", {"steps": 0}, app=app).id for _ in range(jobs)]
        ended = _wait_done(app, ids, timeout=max(120.0, jobs / 5))
        calls = _calls_between(url, calls)
        ok = sum(1 for s in backend_states(app, ids).values() if s == celery_states.SUCCESS)
        return {"side": "jobqueue" + (" + monitor" if monitor else ""), "jobs": jobs, "succeeded": ok,
                "seconds": ended - started, "jobs/s": jobs / (ended - started), "calls": calls}
    finally:
        fleet.stop()
        if mon is not None:
            mon.stop()
        app.close()


def run_plain(url: str, workdir: Path, jobs: int, workers: int, reliable: bool = False) -> dict[str, Any]:
    from celery import Celery


    app = Celery("bench-plain-client", broker=url, backend=url, set_as_current=False)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    task_send_sent_event=reliable)
    env = child_env(None, BENCH_BROKER_URL=url, BENCH_PLAIN_RELIABLE="1" if reliable else "0")
    procs: list[Process] = []
    try:
        for n in range(workers):
            cmd = [sys.executable, "-m", "celery", "-A", "bench.plain_app", "worker", "-Q", "plain",
                   "-P", "threads", "-c", "1", "-n", f"plain{n}@%h", "--loglevel", "INFO",
                   "--without-mingle", "--without-gossip"]
            procs.append(Process(cmd, env, workdir / f"plain-{n}.log").start())
        app.send_task("bench.noop", queue="plain").get(timeout=60)  # warm: every worker up soon after
        wait_until(lambda: len(app.control.ping(timeout=0.5) or []) >= workers, 60, what="plain workers")
        calls = _command_calls(url)
        started = time.perf_counter()
        ids = [app.send_task("bench.noop", queue="plain").id for _ in range(jobs)]
        ended = _wait_done(app, ids, timeout=max(120.0, jobs / 5))
        calls = _calls_between(url, calls)
        ok = sum(1 for s in backend_states(app, ids).values() if s == celery_states.SUCCESS)
        side = "plain Celery, acks late + events" if reliable else "plain Celery (stock)"
        return {"side": side, "jobs": jobs, "succeeded": ok, "seconds": ended - started,
                "jobs/s": jobs / (ended - started), "calls": calls}
    finally:
        for proc in procs:
            proc.stop()
        app.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-monitor", action="store_true", help="run jobqueue without the monitor")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    server = RedisServer().start()
    try:
        url = server.url(0)
        plain = run_plain(url, workdir, args.jobs, args.workers)
        reliable = run_plain(url, workdir, args.jobs, args.workers, reliable=True)
        ours = run_jobqueue(url, workdir, args.jobs, args.workers, monitor=not args.no_monitor)
    finally:
        server.stop()
    rows = [plain, reliable, ours]
    for row in rows:
        row["redis commands/job"] = sum(row["calls"].values()) / args.jobs
    print(fmt_table(rows, ["side", "jobs", "succeeded", "seconds", "jobs/s", "redis commands/job"]))
    print(f"ratio jobqueue/plain: {ours['jobs/s'] / plain['jobs/s']:.2f}x (target >= 0.8x); "
          f"jobqueue/plain with the same delivery+event settings: {ours['jobs/s'] / reliable['jobs/s']:.2f}x; "
          f"{args.workers} worker(s), threads pool, concurrency 1 each")
    # Where the round trips go: Redis commands per job by command, each side (INFO
    # commandstats over the timed window; includes the bench's own result polling; commands
    # under 0.01 per job on every side are left out).
    names = sorted((n for n in {n for row in rows for n in row["calls"]}
                    if max(r["calls"].get(n, 0) for r in rows) >= 0.01 * args.jobs),
                   key=lambda n: -max(r["calls"].get(n, 0) for r in rows))
    print()
    print(fmt_table([{"command": n, **{r["side"]: r["calls"].get(n, 0) / args.jobs for r in rows}} for n in names],
                    ["command"] + [r["side"] for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
