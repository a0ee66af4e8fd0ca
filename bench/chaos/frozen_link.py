"""Chaos drill: a broker link that freezes (no FIN, no RST), and a worker stopped by SIGTERM.

A private Redis behind a proxy whose open connections can be frozen (``tests/blackhole.py``:
what a dropped NAT entry looks like). Each round:

* **worker**: an idle worker whose every Redis connection goes through the proxy; the proxy
  freezes them. ``worker_back`` = from the freeze until the worker answers a ping again (noticed,
  reconnected, consuming); then a job submitted must run on it.
* **wait**: a client follows a long job through the proxy (``JobHandle.wait(on_progress=...)``)
  while a worker on a direct link runs it; the proxy freezes. ``wait_back`` = from the freeze
  until the next progress report reaches the client.
* **soft shutdown**: a worker with ``--grace`` s of soft shutdown runs a job twice as long; it
  gets SIGTERM. ``soft_exit`` = from SIGTERM until it exited by itself; the job must complete
  once, on the second worker.

    python -m bench.chaos.frozen_link --interval 2 --rounds 3 --grace 3
"""

from __future__ import annotations

import argparse
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import RedisServer, bench_settings, wait_until, wait_worker_ready, worker_process
from jobqueue.client.jobs import submit_job
from jobqueue.config import Settings
from jobqueue.transport.app import create_app
from tests.blackhole import BlackholeProxy


def answers(app: Any, node: str) -> bool:
    return any(node in reply for reply in app.control.ping(destination=[node], timeout=0.5) or [])


def worker_round(settings: Settings, proxy: BlackholeProxy, app: Any, workdir: Path, n: int) -> float:
    """Seconds from the freeze until an idle worker behind the proxy answers again."""
    via = f"redis://127.0.0.1:{proxy.port}/0"
    proc = worker_process(settings, "gpu0", workdir / f"worker-frozen-{n}.log",
                          JOBQUEUE_BROKER_URL=via, JOBQUEUE_RESULT_BACKEND=via).start()
    node = f"gpu0@{settings.machine_id}"
    try:
        wait_worker_ready(app, node, proc)
        proxy.blackhole()
        frozen = time.monotonic()
        wait_until(lambda: answers(app, node), 120, interval=0.2, what="the worker to answer again")
        back = time.monotonic() - frozen
        job = submit_job("simulation", {"steps": 1, "step_seconds": 0.05, "output": "after"}, app=app, queue="gpu0")
        assert job.wait(timeout=60)["output"] == "after"
        return back
    finally:
        proc.stop()


def wait_round(settings: Settings, proxy: BlackholeProxy, app: Any, workdir: Path, n: int) -> float:
    """Seconds from the freeze until the next progress report reaches a client behind the proxy."""
    via = f"redis://127.0.0.1:{proxy.port}/0"
    client = create_app(settings.model_copy(update={"broker_url": via, "result_backend": via}))
    proc = worker_process(settings, "gpu0", workdir / f"worker-wait-{n}.log").start()
    node = f"gpu0@{settings.machine_id}"
    seen: list[float] = []
    steps = int(max(20.0, 6 * settings.redis_health_interval) / 0.25)  # outlasts the bound
    try:
        wait_worker_ready(app, node, proc)
        job = submit_job("simulation", {"steps": steps, "step_seconds": 0.25, "output": "w"}, app=client, queue="gpu0")
        thread = threading.Thread(target=lambda: job.wait(timeout=120, on_progress=lambda _: seen.append(time.monotonic())),
                                  daemon=True)
        thread.start()
        wait_until(lambda: len(seen) >= 3, 60, what="progress through the proxy")
        proxy.blackhole()
        frozen = time.monotonic()
        wait_until(lambda: seen[-1] > frozen, 90, interval=0.1, what="progress after the freeze")
        thread.join(steps * 0.25 + 30)  # the job ends and wait() returns before the client closes
        return min(at for at in seen if at > frozen) - frozen
    finally:
        proc.stop(timeout=5)
        client.close()


def soft_round(settings: Settings, app: Any, workdir: Path, grace: float, n: int) -> float:
    """Seconds from SIGTERM until a worker with ``grace`` s of soft shutdown exited by itself."""
    first = worker_process(settings, "gpu0", workdir / f"worker-soft-{n}.log",
                           JOBQUEUE_SOFT_SHUTDOWN_TIMEOUT=str(grace)).start()
    wait_worker_ready(app, f"gpu0@{settings.machine_id}", first)
    # Longer than the grace by far more than a second worker takes to start on a busy machine.
    steps = int((2 * grace + 30) / 0.25)
    job = submit_job("simulation", {"steps": steps, "step_seconds": 0.25, "output": "s"}, app=app)
    wait_until(lambda: job.status().value == "processing", 60, what="the job to start")
    second = worker_process(settings, "gpu1", workdir / f"worker-soft2-{n}.log").start()
    wait_worker_ready(app, f"gpu1@{settings.machine_id}", second)
    try:
        assert first.proc is not None
        sent = time.monotonic()
        first.proc.send_signal(signal.SIGTERM)
        first.proc.wait(timeout=60)
        exited = time.monotonic() - sent
        result = job.wait(timeout=120)
        assert result["worker"] == f"gpu1@{settings.machine_id}", result
        return exited
    finally:
        first.stop()
        second.stop()


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=2.0, help="JOBQUEUE_REDIS_HEALTH_INTERVAL (s)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--grace", type=float, default=3.0, help="JOBQUEUE_SOFT_SHUTDOWN_TIMEOUT (s)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="frozen-link-") as tmp:
        workdir = Path(tmp)
        redis_server = RedisServer().start()
        try:
            settings = bench_settings(redis_server.url(0), workdir, redis_health_interval=args.interval)
            app = create_app(settings)
            times: dict[str, list[float]] = {"worker_back": [], "wait_back": [], "soft_exit": []}
            for n in range(args.rounds):
                for kind, run in (("worker_back", worker_round), ("wait_back", wait_round)):
                    proxy = BlackholeProxy(redis_server.port).start()
                    try:
                        times[kind].append(run(settings, proxy, app, workdir, n))
                    finally:
                        proxy.stop()
                times["soft_exit"].append(soft_round(settings, app, workdir, args.grace, n))
            app.close()
        finally:
            redis_server.stop()
    parts = [f"{k}={statistics.median(v):.1f}s(max {max(v):.1f})" for k, v in times.items()]
    line = f"frozen-link: interval={args.interval:g}s grace={args.grace:g}s rounds={args.rounds} " + " ".join(parts)
    print(line)
    return line


if __name__ == "__main__":
    main()
