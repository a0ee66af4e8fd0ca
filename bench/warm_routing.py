"""Warm routing: jobs alternating two checkpoints on two workers, side by side with taking them
as they come (FIFO, ``JOBQUEUE_WARM_GRACE=0``: what every worker did before warm routing).

Two ComfyUI simulators (one per "machine", each a subprocess with both checkpoints and 8 GiB of
VRAM, so one 6.5 GiB checkpoint fits at a time) pay ``--load-seconds`` whenever a prompt runs
its checkpoint loader (ComfyUI's classic cache keeps only the previous prompt's loader output).
Each side starts two real workers, one per simulator, waits until both take both checkpoints'
jobs, submits ``--jobs`` jobs alternating a and b (each loads its checkpoint, then samples
``--steps`` steps of 0.1 s), and waits for all. Two scenarios, each side by side: a backlog
(all jobs at once) and a stream (one job every ``--interval`` seconds).

* ``loads``: checkpoint loads the simulators ran (their ``/_sim/state`` counter): a warm hit is
  a job that loaded nothing.
* ``mean run s``: a job's mean time on its worker (the ``duration`` of its result: loading included).
* ``total s``: first submit to last result (a stream cannot end before its last arrival).

    python -m bench.warm_routing
    python -m bench.warm_routing --jobs 40 --load-seconds 3 --steps 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from bench.common import RedisServer, bench_settings, fmt_table, wait_worker_ready, worker_process
from jobqueue.client.jobs import submit_job
from jobqueue.connectors.comfyui.connector import EXAMPLE_WORKFLOW
from jobqueue.sims.comfyui.models import checkpoint_workflow
from jobqueue.sims.comfyui.process import SimulatorProcess
from jobqueue.transport.app import create_app
from jobqueue.up.procs import ChildProcess, wait_until

A, B = "a.safetensors", "b.safetensors"


def workflow(ckpt: str, n: int, steps: int) -> dict[str, Any]:
    """Load ``ckpt``, sample ``steps`` steps of about 0.1 s, save one image. The sampler's input
    differs from job to job (as a seed does), so only the loader can come from ComfyUI's cache."""
    wf = checkpoint_workflow(ckpt, f"j{n}")
    wf["5"] = {"class_type": "HarnessSleepProgress",
               "inputs": {"image": ["3", 0], "steps": steps, "delay": round(0.1 + n / 10000, 4)}}
    wf["4"]["inputs"]["images"] = ["5", 0]
    return wf


def loads(sims: list[SimulatorProcess]) -> int:
    return sum(int(requests.get(f"{sim.url}/_sim/state", timeout=10).json()["loads"]) for sim in sims)


def start_cold(sims: list[SimulatorProcess]) -> None:
    """Run a prompt without a checkpoint loader on each simulator: ComfyUI's cache then holds no
    loader, so each side starts with nothing loaded."""
    for sim in sims:
        pid = requests.post(f"{sim.url}/prompt", json={"prompt": EXAMPLE_WORKFLOW}, timeout=10).json()["prompt_id"]
        wait_until(lambda url=sim.url, pid=pid: pid in requests.get(f"{url}/history/{pid}", timeout=10).json(),  # type: ignore[misc]
                   30, interval=0.1, what="the cache to be cleared")


def consumes_both(app: Any, node: str) -> bool:
    replies = app.control.inspect(destination=[node], timeout=1.0).active_queues() or {}
    names = {q["name"] for q in replies.get(node, [])}
    return {f"comfyui.model.{A}", f"comfyui.model.{B}"} <= names


def run_side(name: str, grace: float, sims: list[SimulatorProcess], redis_url: str, workdir: Path,
             jobs: int, steps: int, interval: float) -> dict[str, Any]:
    """Two workers with ``JOBQUEUE_WARM_GRACE=grace``, ``jobs`` alternating jobs submitted
    ``interval`` seconds apart (0: all at once); the row."""
    workers: list[tuple[ChildProcess, str]] = []
    app = None
    try:
        for i, sim in enumerate(sims):
            settings = bench_settings(redis_url, workdir, connectors=("comfyui",), comfyui_url=sim.url,
                                      machine_id=f"warm{uuid.uuid4().hex[:6]}-{i}", warm_grace=grace)
            app = app or create_app(settings)
            proc = worker_process(settings, "gpu0", workdir / f"{name.split()[0]}-{i}.log").start()
            workers.append((proc, f"gpu0@{settings.machine_id}"))
        assert app is not None
        for proc, node in workers:
            wait_worker_ready(app, node, proc)  # type: ignore[arg-type]  # bench.common.Process is a ChildProcess
            wait_until(lambda n=node: consumes_both(app, n), 60, interval=0.2,  # type: ignore[misc]
                       what=f"{node} to take both checkpoints")
        start_cold(sims)
        before = loads(sims)
        started = time.perf_counter()
        handles = []
        for i in range(jobs):
            if interval > 0:
                time.sleep(max(0.0, started + i * interval - time.perf_counter()))  # the arrival schedule
            handles.append(submit_job("comfyui", {"workflow": workflow(A if i % 2 == 0 else B, i, steps)}, app=app))
        results = [h.wait(timeout=600) for h in handles]
        total = time.perf_counter() - started
        ran = loads(sims) - before
        per_worker = {node: sum(1 for r in results if r["worker"] == node) for _, node in workers}
        return {"arrival": f"every {interval:g} s" if interval > 0 else "all at once", "side": name, "jobs": jobs, "loads": ran, "warm hits %": round(100.0 * (jobs - ran) / jobs, 1),
                "mean run s": round(sum(float(r["duration"]) for r in results) / len(results), 2),
                "total s": round(total, 1), "jobs per worker": "/".join(str(n) for n in per_worker.values())}
    finally:
        for proc, _ in workers:
            proc.stop()
        if app is not None:
            app.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--load-seconds", type=float, default=3.0)
    parser.add_argument("--steps", type=int, default=5, help="sampling steps of 0.1 s per job")
    parser.add_argument("--grace", type=float, default=2.0, help="JOBQUEUE_WARM_GRACE of the warm side")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds between two jobs of the stream scenario (the other: all at once)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-warm-"))
    server = RedisServer().start()
    sims = [SimulatorProcess(output_dir=workdir / f"sim{i}", log_path=workdir / f"sim{i}.log",
                             extra_args=("--models", f"{A},{B}", "--vram-gb", "8")).start() for i in range(2)]
    rows = []
    try:
        for sim in sims:
            sim.set_options(load_seconds=args.load_seconds, checkpoint_gb=6.5)
        print(f"{args.jobs} jobs alternating {A} and {B} on two workers, a load takes {args.load_seconds:g} s, "
              f"a job samples {args.steps} x 0.1 s")
        for interval in (0.0, args.interval):
            rows.append(run_side("FIFO (JOBQUEUE_WARM_GRACE=0)", 0.0, sims, server.url(0), workdir, args.jobs,
                                 args.steps, interval))
            rows.append(run_side(f"warm routing (JOBQUEUE_WARM_GRACE={args.grace:g})", args.grace, sims,
                                 server.url(0), workdir, args.jobs, args.steps, interval))
    finally:
        for sim in sims:
            sim.stop()
        server.stop()
    print(fmt_table(rows, ["arrival", "side", "jobs", "loads", "warm hits %", "mean run s", "total s",
                           "jobs per worker"]))
    for fifo, warm in zip(rows[::2], rows[1::2], strict=True):
        print(f"{warm['arrival']}: warm routing {warm['warm hits %']}% warm hits (target >= 90%; FIFO "
              f"{fifo['warm hits %']}%), mean run {warm['mean run s'] / fifo['mean run s']:.2f}x and total time "
              f"{warm['total s'] / fifo['total s']:.2f}x FIFO's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
