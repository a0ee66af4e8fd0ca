"""End-to-end throughput: no-op jobs through jobqueue vs a plain Celery no-op task.

* **jobqueue**: ``submit_job("simulation", {"steps": 0})`` → ``celery -A jobqueue worker -Q
  gpu<N>`` (our settings: acks late, prefetch 1, task events and ``task-sent`` on, the
  lease, connector status) → result in the backend, with the monitor (``jobqueue monitor``)
  consuming the event stream at the same time.
* **plain Celery**: ``bench.noop`` (:mod:`bench.plain_app`) → ``celery -A bench.plain_app
  worker`` with Celery's stock settings.

* **plain Celery, acks late + events**: the same with jobqueue's delivery and event settings
  (``BENCH_PLAIN_RELIABLE=1``, see :mod:`bench.plain_app`).

* **Flower** (with the monitor on): Flower 2.2 (``celery -A bench.plain_app flower``) consumes
  plain Celery's event stream the whole run, as the monitor consumes jobqueue's: the pair
  users run today (issue 30: "jobqueue + monitor vs plain Celery + Flower").

All use the same private Redis (plain Celery on database 1, so the monitor never sees its
events), the same number of workers and the same pool (threads, concurrency 1 per worker,
like one jobqueue worker per GPU). Every side is up for the whole run and the sides take
turns (``--rounds``, the jobs split evenly), so a change of load on the machine hits them
alike. Each turn is timed from its first submit to its last result stored; the table reports
jobs/s over all turns, the ratios (target >= 0.8x), and Redis commands per job (``INFO
commandstats`` over each side's turns; the idle sides' background commands are included), and
CPU ms per job by process (workers, monitor or Flower, Redis, the bench's own client; user +
system CPU from ``/proc``, so a busy machine slows the sides without skewing what each costs).

    python -m bench.throughput --jobs 2000 --workers 2
"""

from __future__ import annotations

import argparse
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from celery import Celery
from celery import states as celery_states

from bench.chaos.drill import Fleet, backend_states
from bench.common import (
    Process,
    RedisServer,
    bench_settings,
    child_env,
    command_calls,
    fmt_table,
    free_port,
    group_cpu_seconds,
    monitor_process,
    server_reads,
    wait_http,
    wait_until,
)
from jobqueue.client.jobs import submit_job
from jobqueue.transport.app import create_app


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


def _calls_between(url: str, before: dict[str, int]) -> dict[str, int]:
    after = command_calls(url)
    return {name: n - before.get(name, 0) for name, n in after.items() if n - before.get(name, 0) > 0}


class JobqueueSide:
    """jobqueue workers (and, with ``monitor``, the monitor) on ``url``: submit_job → result."""

    def __init__(self, url: str, workdir: Path, workers: int, monitor: bool) -> None:
        self.settings = bench_settings(url, workdir)
        self.app = create_app(self.settings)
        self.fleet = Fleet(self.app, self.settings, workdir, size=workers)
        self.monitor = monitor
        self.mon: Process | None = None
        self.workdir = workdir
        self.name = "jobqueue" + (" + monitor" if monitor else "")

    def start(self) -> None:
        if self.monitor:
            port = free_port()
            self.mon = monitor_process(self.settings, port, self.workdir / "monitor.log").start()
            wait_http(f"http://127.0.0.1:{port}/healthz", self.mon)
        self.fleet.start_all()
        submit_job("simulation", {"steps": 0}, app=self.app).wait(timeout=60)  # warm: connections, queues

    def worker_groups(self) -> list[int]:
        return [proc.pid for proc in self.fleet.workers.values()]

    def consumer_groups(self) -> list[int]:
        return [self.mon.pid] if self.mon is not None else []

    def submit(self, jobs: int) -> list[str]:
        return [submit_job("simulation", {"steps": 0}, app=self.app).id for _ in range(jobs)]

    def stop(self) -> None:
        self.fleet.stop()
        if self.mon is not None:
            self.mon.stop()
        self.app.close()


class PlainSide:
    """``bench.noop`` through ``celery -A bench.plain_app`` workers on a queue of their own;
    ``reliable``: with jobqueue's delivery and event settings."""

    def __init__(self, url: str, workdir: Path, workers: int, reliable: bool, flower: bool = False) -> None:
        self.url, self.workdir, self.workers, self.reliable = url, workdir, workers, reliable
        self.flower: Process | None = None
        self.with_flower = flower
        self.queue = "plain-reliable" if reliable else "plain-stock"
        self.app = Celery("bench-plain-client", broker=url, backend=url, set_as_current=False)
        self.app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                             task_send_sent_event=reliable)
        self.procs: list[Process] = []
        self.name = "plain Celery, acks late + events" if reliable else "plain Celery (stock)"
        if flower:
            self.name += " + Flower"

    def start(self) -> None:
        env = child_env(None, BENCH_BROKER_URL=self.url, BENCH_PLAIN_RELIABLE="1" if self.reliable else "0")
        if self.with_flower:
            port = free_port()
            cmd = [sys.executable, "-m", "celery", "-A", "bench.plain_app", "flower", f"--port={port}",
                   "--address=127.0.0.1", "--inspect_timeout=1000",
                   "--enable_events=False"]  # the reliable workers send events already; stock stays stock
            self.flower = Process(cmd, env, self.workdir / "flower.log").start()
            wait_http(f"http://127.0.0.1:{port}/healthcheck", self.flower)
        nodes = [f"{self.queue}{n}@{socket.gethostname()}" for n in range(self.workers)]
        for n, node in enumerate(nodes):
            cmd = [sys.executable, "-m", "celery", "-A", "bench.plain_app", "worker", "-Q", self.queue,
                   "-P", "threads", "-c", "1", "-n", node, "--loglevel", "INFO",
                   "--without-mingle", "--without-gossip"]
            self.procs.append(Process(cmd, env, self.workdir / f"{self.queue}-{n}.log").start())
        wait_until(lambda: len(self.app.control.ping(destination=nodes, timeout=0.5) or []) >= self.workers, 60,
                   what=f"{self.queue} workers")
        self.app.send_task("bench.noop", queue=self.queue).get(timeout=60)  # warm

    def worker_groups(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def consumer_groups(self) -> list[int]:
        return [self.flower.pid] if self.flower is not None else []

    def submit(self, jobs: int) -> list[str]:
        return [self.app.send_task("bench.noop", queue=self.queue).id for _ in range(jobs)]

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()
        if self.flower is not None:
            self.flower.stop()
        self.app.close()


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(url: str, plain_url: str, workdir: Path, jobs: int, workers: int, monitor: bool,
        rounds: int, redis_pid: int = 0) -> list[dict[str, Any]]:
    """Every side up at once; ``rounds`` rounds of ``jobs / rounds`` jobs per side, the sides
    taking turns, so a load change on the machine hits them alike. Plain Celery runs on
    ``plain_url`` (another database: the monitor never sees its events)."""
    sides: list[Any] = [PlainSide(plain_url, workdir, workers, reliable=False),
                        PlainSide(plain_url, workdir, workers, reliable=True, flower=monitor),
                        JobqueueSide(url, workdir, workers, monitor)]
    seconds = {side.name: 0.0 for side in sides}
    succeeded = {side.name: 0 for side in sides}
    calls_of: dict[str, dict[str, int]] = {side.name: {} for side in sides}
    reads_of = {side.name: 0 for side in sides}
    cpu: dict[str, dict[str, float]] = {side.name: {"workers": 0.0, "redis": 0.0, "bench client": 0.0}
                                        for side in sides}
    per_round = max(1, jobs // rounds)
    try:
        for side in sides:
            side.start()
        consumers = {side.name: group_cpu_seconds(side.consumer_groups()) for side in sides}
        for _ in range(rounds):
            for side in sides:
                calls, reads = command_calls(url), server_reads(url)
                before = (group_cpu_seconds(side.worker_groups()), group_cpu_seconds([redis_pid]), _own_cpu())
                started = time.perf_counter()
                ids = side.submit(per_round)
                ended = _wait_done(side.app, ids, timeout=max(120.0, per_round / 5))
                seconds[side.name] += ended - started
                after = (group_cpu_seconds(side.worker_groups()), group_cpu_seconds([redis_pid]), _own_cpu())
                for key, was, now in zip(("workers", "redis", "bench client"), before, after, strict=True):
                    cpu[side.name][key] += now - was
                reads_of[side.name] += server_reads(url) - reads - 1  # less the INFO commandstats
                for name, n in _calls_between(url, calls).items():
                    calls_of[side.name][name] = calls_of[side.name].get(name, 0) + n
                succeeded[side.name] += sum(1 for s in backend_states(side.app, ids).values()
                                            if s == celery_states.SUCCESS)
        time.sleep(2.0)  # a consumer still working through the last turn's events
        for side in sides:
            cpu[side.name]["monitor / Flower"] = group_cpu_seconds(side.consumer_groups()) - consumers[side.name]
    finally:
        for side in sides:
            side.stop()
    done = per_round * rounds
    return [{"side": name, "jobs": done, "succeeded": succeeded[name], "seconds": seconds[name],
             "jobs/s": done / seconds[name], "calls": calls_of[name], "cpu": cpu[name],
             "redis round trips/job": reads_of[name] / done} for name in seconds]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-monitor", action="store_true", help="run jobqueue without the monitor")
    parser.add_argument("--rounds", type=int, default=4, help="turns each side takes (jobs split evenly)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    server = RedisServer().start()
    try:
        rows = run(server.url(0), server.url(1), workdir, args.jobs, args.workers, not args.no_monitor, args.rounds,
                   redis_pid=server.process.pid)
    finally:
        server.stop()
    plain, reliable, ours = rows
    jobs = ours["jobs"]
    for row in rows:
        row["redis commands/job"] = sum(row["calls"].values()) / jobs
    print(fmt_table(rows, ["side", "jobs", "succeeded", "seconds", "jobs/s", "redis commands/job",
                           "redis round trips/job"]))
    target = "1.1x, with Flower beside plain Celery" if not args.no_monitor else "0.95x"
    print(f"ratio jobqueue/plain: {ours['jobs/s'] / plain['jobs/s']:.2f}x; "
          f"jobqueue/plain with the same delivery+event settings: {ours['jobs/s'] / reliable['jobs/s']:.2f}x "
          f"(target >= {target}); "
          f"{args.workers} worker(s), threads pool, concurrency 1 each, {args.rounds} rounds taking turns")
    # Where the round trips go: Redis commands per job by command, each side (INFO
    # commandstats over the timed window; includes the bench's own result polling; commands
    # under 0.01 per job on every side are left out).
    names = sorted((n for n in {n for row in rows for n in row["calls"]}
                    if max(r["calls"].get(n, 0) for r in rows) >= 0.01 * jobs),
                   key=lambda n: -max(r["calls"].get(n, 0) for r in rows))
    print()
    print(fmt_table([{"command": n, **{r["side"]: r["calls"].get(n, 0) / jobs for r in rows}} for n in names],
                    ["command"] + [r["side"] for r in rows]))
    # Where the CPU goes: CPU ms per job by process, each side (workers, Redis and this
    # process over the side's own turns; the monitor or Flower over the whole run, as it
    # may still be working through a turn's events during the next one).
    parts = ["workers", "monitor / Flower", "redis", "bench client"]
    print()
    print(fmt_table([{"side": r["side"], **{f"{p} ms": 1000 * r["cpu"].get(p, 0.0) / jobs for p in parts},
                      "total ms": 1000 * sum(r["cpu"].values()) / jobs} for r in rows],
                    ["side", *(f"{p} ms" for p in parts), "total ms"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
