"""What Redis ``WAIT`` costs a submit: ``submit_job()`` on one Sentinel group (master, replica,
three sentinels on this machine), with ``JOBQUEUE_REDIS_WAIT_REPLICAS`` 1 (the default on
Sentinel: the message and submit record must reach the replica first) and 0 (no ``WAIT``),
and on a single plain Redis server for reference, taking turns in one run.

No worker runs: this is the client path alone. Reported per side: submits per second, the
median and p99 of one submit, and the ratio to the plain server.

    python -m bench.sentinel_wait --jobs 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RedisServer, bench_settings, fmt_table, percentile
from bench.sentinels import MASTER_NAME, SentinelGroup
from jobqueue.client.jobs import submit_job
from jobqueue.transport.app import create_app

PAYLOAD = {"steps": 0, "step_seconds": 0.0}


def _times(app: Any, jobs: int) -> list[float]:
    submit_job("simulation", dict(PAYLOAD), app=app)  # warm up: connection, queue declared
    times = []
    for _ in range(jobs):
        began = time.perf_counter()
        submit_job("simulation", dict(PAYLOAD), app=app)
        times.append(time.perf_counter() - began)
    return times


def measure(group: SentinelGroup, plain: RedisServer, workdir: Path, jobs: int, rounds: int) -> list[dict[str, Any]]:
    """Submit ``jobs`` jobs per side per round, the sides taking turns; rows per side."""
    sides = {
        "redis:// (one server)": bench_settings(plain.url(0), workdir),
        "sentinel://, WAIT 1 replica": bench_settings(group.url(0), workdir, redis_master_name=MASTER_NAME),
        "sentinel://, no WAIT": bench_settings(group.url(0), workdir, redis_master_name=MASTER_NAME,
                                               redis_wait_replicas=0),
    }
    apps = {name: create_app(settings) for name, settings in sides.items()}
    samples: dict[str, list[float]] = {name: [] for name in sides}
    try:
        for _ in range(rounds):
            for name, app in apps.items():
                samples[name].extend(_times(app, jobs))
    finally:
        for app in apps.values():
            app.close()
    base = sum(samples["redis:// (one server)"]) / len(samples["redis:// (one server)"])
    rows = []
    for name, times in samples.items():
        mean = sum(times) / len(times)
        rows.append({"side": name, "submits/s": 1.0 / mean, "median ms": percentile(times, 50) * 1000,
                     "p99 ms": percentile(times, 99) * 1000, "mean vs one server": f"{mean / base:.2f}x"})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000, help="submits per side per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-sentinel-wait-"))
    group = SentinelGroup(workdir=workdir / "group").start()
    plain = RedisServer().start()
    try:
        rows = measure(group, plain, workdir, args.jobs, args.rounds)
    finally:
        plain.stop()
        group.stop()
    print(fmt_table(rows, ["side", "submits/s", "median ms", "p99 ms", "mean vs one server"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
