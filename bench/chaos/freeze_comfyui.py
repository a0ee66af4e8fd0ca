"""Chaos drill: freeze (SIGSTOP) and then kill the ComfyUI (or, with ``--service a1111``, the
Stable Diffusion WebUI) serving one worker, mid-job.

``--workers`` real workers each talk to their own simulated ComfyUI process
(``python -m jobqueue.sims.comfyui``, the real HTTP + websocket protocol). ``--jobs`` ComfyUI
jobs (distinct workflows, so nothing is served from cache) go to the shared ``comfyui``
queue. Once a job runs on worker 0, its ComfyUI is frozen with SIGSTOP (a hung process:
sockets open, no answers), and ``--kill-after`` seconds later SIGKILLed. Every job must
still succeed, the frozen one on a healthy worker. Time to recover = from the freeze until
the job that was running on the frozen service succeeded elsewhere.

    python -m bench.chaos.freeze_comfyui --jobs 20 --workers 3
    python -m bench.chaos.freeze_comfyui --jobs 20 --workers 3 --service a1111

With ``--service a1111`` each worker talks to its own ``python -m jobqueue.sims.a1111`` (the
WebUI's ``/sdapi/v1`` API) and the jobs are txt2img requests of distinct seeds.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.chaos.drill import Fleet, Observer, backend_states, finished, summary_line
from bench.common import RedisServer, bench_settings, wait_until, wait_worker_ready, worker_process
from jobqueue.client.jobs import submit_job
from jobqueue.sims.a1111.process import A1111SimulatorProcess
from jobqueue.sims.comfyui.process import SimulatorProcess
from jobqueue.transport.app import create_app

#: Services this drill can freeze, and the variable that gives each worker its server's URL.
SERVICES = {"comfyui": "JOBQUEUE_COMFYUI_URL", "a1111": "JOBQUEUE_A1111_URL"}


def workflow(steps: int, delay: float, color: int) -> dict[str, Any]:
    """A model-free workflow that takes ``steps * delay`` seconds and reports each step."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": color}},
        "2": {"class_type": "HarnessSleepProgress", "inputs": {"image": ["1", 0], "steps": steps, "delay": delay}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "chaos"}},
    }


def payload(service: str, steps: int, delay: float, n: int) -> dict[str, Any]:
    """Job ``n`` of the drill (distinct, so nothing comes from a cache)."""
    if service == "a1111":  # the simulator's step time is ``delay`` (set when it starts)
        return {"prompt": f"chaos {n}", "seed": 1000 + n, "steps": steps, "width": 64, "height": 64}
    return {"workflow": workflow(steps, delay, 1000 + n)}


def simulator(service: str, workdir: Path, n: int, delay: float) -> SimulatorProcess:
    """The simulated server of worker ``n``, not yet started."""
    if service == "a1111":
        return A1111SimulatorProcess(step_seconds=delay, log_path=workdir / f"sim{n}.log")
    return SimulatorProcess(output_dir=workdir / f"sim{n}", log_path=workdir / f"sim{n}.log")


@dataclass
class Result:
    jobs: int
    finished: int
    duplicates: int
    reruns: int
    recover: float | None
    moved: int
    finished_on_frozen: int
    seconds: float
    service: str = "comfyui"

    def line(self) -> str:
        return summary_line(f"freeze-{self.service}", jobs=self.jobs, finished=self.finished, duplicates=self.duplicates,
                            recover=self.recover, reruns=self.reruns, moved_jobs=self.moved,
                            finished_on_frozen_worker=self.finished_on_frozen, seconds=round(self.seconds, 1))


def run(url: str, workdir: Path, *, jobs: int = 20, workers: int = 3, stall: float = 3.0,
        kill_after: float = 2.0, steps: int = 10, delay: float = 0.1, timeout: float = 180.0,
        service: str = "comfyui") -> Result:
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r} (known: {', '.join(SERVICES)})")
    settings = bench_settings(url, workdir, connectors=(service,), stall_timeout=stall)
    app = create_app(settings)
    sims = [simulator(service, workdir, n, delay) for n in range(workers)]
    fleet = Fleet(app, settings, workdir, size=workers)
    observer = Observer(app).start()
    started = time.monotonic()
    try:
        for sim in sims:
            sim.start()
        for gpu, sim in enumerate(sims):
            fleet.workers[gpu] = worker_process(settings, f"gpu{gpu}", workdir / f"worker-gpu{gpu}.log",
                                                **{SERVICES[service]: sim.url}).start()
        for gpu in range(workers):
            wait_worker_ready(app, fleet.node_name(gpu), fleet.workers[gpu])
        ids = [submit_job(service, payload(service, steps, delay, n), app=app).id for n in range(jobs)]
        frozen_node = fleet.node_name(0)
        victims = wait_until(lambda: observer.running_on(frozen_node), timeout, interval=0.05,
                             what="a job running on worker 0")
        frozen_sim = sims[0]
        assert frozen_sim.proc is not None
        os.kill(frozen_sim.proc.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        time.sleep(kill_after)  # the freeze itself, not a synchronisation
        frozen_sim.kill()
        recover: float | None = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = backend_states(app, ids)
            if recover is None and all(states[v] == "SUCCESS" for v in victims):
                recover = time.monotonic() - frozen_at
            if all(s == "SUCCESS" for s in states.values()):
                break
            time.sleep(0.1)
        counts = observer.counts()
        results = [app.AsyncResult(v).result for v in victims]
        moved = sum(1 for r in results if isinstance(r, dict) and r.get("worker") != frozen_node)
        on_frozen = sum(1 for r in results if isinstance(r, dict) and r.get("worker") == frozen_node)
        return Result(jobs=jobs, finished=finished(app, ids), duplicates=counts["duplicates"],
                      reruns=counts["reruns"], recover=recover, moved=moved, finished_on_frozen=on_frozen,
                      seconds=time.monotonic() - started, service=service)
    finally:
        observer.stop()
        fleet.stop()
        for sim in sims:
            if sim.proc is not None and sim.proc.poll() is None:
                os.killpg(sim.proc.pid, signal.SIGCONT)
            sim.stop()
        app.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--stall", type=float, default=3.0, help="the jobs' stall timeout (s)")
    parser.add_argument("--kill-after", type=float, default=2.0, help="seconds frozen before the kill")
    parser.add_argument("--service", choices=sorted(SERVICES), default="comfyui", help="which server to freeze")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix=f"chaos-{args.service}-"))
    server = RedisServer().start()
    try:
        result = run(server.url(0), workdir, jobs=args.jobs, workers=args.workers, stall=args.stall,
                     kill_after=args.kill_after, service=args.service)
    finally:
        server.stop()
    print(result.line())
    print(f"(logs in {workdir})")
    return 0 if result.finished == result.jobs and result.finished_on_frozen == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
