"""Round trip of one no-op job: submit → result in hand, jobqueue vs plain Celery, side by side.

* **jobqueue**: ``submit_job("simulation", {"steps": 0}).wait()`` through one ``celery -A
  jobqueue worker -Q gpu0`` (threads pool, concurrency 1).
* **plain Celery, same settings**: ``send_task("bench.noop").get()`` through one ``celery -A
  bench.plain_app worker`` with ``BENCH_PLAIN_RELIABLE=1`` (acks late, reject on worker lost,
  prefetch 1, task events and ``task-sent``, track started, extended results: the delivery and
  event settings jobqueue runs with), same pool and concurrency.

Both workers run at the same time on the same private Redis, and the jobs alternate (one
jobqueue job, one plain job, ...), one at a time, so a load spike from elsewhere on the machine
hits both sides alike. The table gives p50/p90/p99 per side, the ratio of the p50s (target
≤ 1.1×, issue 30; ≤ 1.5× before it) and the Redis commands per job of each side (``INFO
commandstats`` around a separate, sequential run of each side), with Redis's socket reads per
job (``INFO stats``
``total_reads_processed``: about its round trips; the workers' included).

    python -m bench.roundtrip --jobs 300
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Celery

from bench.chaos.drill import Fleet
from bench.common import (
    Process,
    RedisServer,
    bench_settings,
    child_env,
    command_calls,
    fmt_table,
    percentile,
    server_reads,
    wait_until,
)
from jobqueue.client.jobs import submit_job
from jobqueue.transport.app import create_app


def calls_per_job(url: str, run_one: Callable[[], Any], jobs: int) -> tuple[dict[str, float], float]:
    """Redis commands per job, by command, and Redis's socket reads per job (about its round
    trips, :func:`~bench.common.server_reads`), over ``jobs`` sequential round trips."""
    before, reads = command_calls(url), server_reads(url)
    for _ in range(jobs):
        run_one()
    reads = server_reads(url) - reads - 1  # less the INFO of the first count
    after = command_calls(url)
    return {name: (n - before.get(name, 0)) / jobs for name, n in after.items() if n > before.get(name, 0)}, reads / jobs


def plain_client(url: str) -> Celery:
    """The client side of the plain baseline (sends ``task-sent`` like jobqueue's client)."""
    app = Celery("bench-plain-client", broker=url, backend=url, set_as_current=False)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    task_send_sent_event=True)
    return app


def plain_worker(url: str, workdir: Path) -> Process:
    cmd = [sys.executable, "-m", "celery", "-A", "bench.plain_app", "worker", "-Q", "plain", "-P", "threads",
           "-c", "1", "-n", "plain0@%h", "--loglevel", "INFO", "--without-mingle", "--without-gossip"]
    env = child_env(None, BENCH_BROKER_URL=url, BENCH_PLAIN_RELIABLE="1")
    return Process(cmd, env, workdir / "plain-0.log").start()


def run(url: str, workdir: Path, jobs: int, count_jobs: int) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    settings = bench_settings(url, workdir)
    app = create_app(settings)
    plain = plain_client(url)
    fleet = Fleet(app, settings, workdir, size=1)
    worker: Process | None = None
    try:
        worker = plain_worker(url, workdir)
        fleet.start_all()
        wait_until(lambda: len(plain.control.ping(destination=["plain0@" + _host()], timeout=0.5) or []) >= 1,
                   60, what="plain worker")

        def ours() -> Any:
            return submit_job("simulation", {"steps": 0}, app=app).wait(timeout=30)

        def theirs() -> Any:
            return plain.send_task("bench.noop", queue="plain").get(timeout=30)

        for _ in range(20):  # warm: connections, subscriptions, imports on both sides
            ours()
            theirs()
        times: dict[str, list[float]] = {"jobqueue": [], "plain": []}
        for _ in range(jobs):
            for side, one in (("jobqueue", ours), ("plain", theirs)):
                started = time.perf_counter()
                one()
                times[side].append((time.perf_counter() - started) * 1000.0)
        counted = {"jobqueue": calls_per_job(url, ours, count_jobs), "plain": calls_per_job(url, theirs, count_jobs)}
        calls = {side: c for side, (c, _) in counted.items()}
    finally:
        fleet.stop()
        if worker is not None:
            worker.stop()
        plain.close()
        app.close()
    names = {"jobqueue": "jobqueue (submit_job → wait)", "plain": "plain Celery, same settings (send_task → get)"}
    rows = [{"side": names[side], "jobs": len(values), "p50 ms": percentile(values, 50),
             "p90 ms": percentile(values, 90), "p99 ms": percentile(values, 99),
             "redis commands/job": sum(calls[side].values()), "redis round trips/job": counted[side][1]}
            for side, values in times.items()]
    return rows, calls


def _host() -> str:
    import socket

    return socket.gethostname()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300, help="timed round trips per side")
    parser.add_argument("--count-jobs", type=int, default=100, help="round trips per side for the command count")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-roundtrip-"))
    server = RedisServer().start()
    try:
        rows, calls = run(server.url(0), workdir, args.jobs, args.count_jobs)
    finally:
        server.stop()
    print(fmt_table(rows, ["side", "jobs", "p50 ms", "p90 ms", "p99 ms", "redis commands/job",
                           "redis round trips/job"]))
    print(f"ratio jobqueue/plain p50: {rows[0]['p50 ms'] / rows[1]['p50 ms']:.2f}x (target <= 1.1x); "
          "one worker each, threads pool, concurrency 1, jobs alternating")
    names = sorted({n for side in calls.values() for n in side}, key=lambda n: -max(c.get(n, 0) for c in calls.values()))
    print()
    print(fmt_table([{"command": n, **{side: c.get(n, 0.0) for side, c in calls.items()}} for n in names],
                    ["command", *calls]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
