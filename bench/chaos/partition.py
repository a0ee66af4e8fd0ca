"""Chaos drill: cut one machine off the network mid-job; the job must finish exactly once.

Machines are Linux network namespaces on a bridge (:mod:`bench.chaos.netns`; needs root and
iproute2). Each runs a ComfyUI simulator on its own loopback and one worker
(``celery -A jobqueue worker -Q gpu0``) whose outputs go to an S3 store. The broker (a private
``redis-server``), the store (moto's S3 server) and the monitor run on the host, on the
bridge's address.

The drill submits one long ComfyUI job (``--job-seconds``), waits until it runs, pulls the
cable of the machine running it for ``--cut`` seconds, then plugs it back in. Expected: the
cut-off worker cannot renew its lease, gives the job up (interrupts its prompt, reports
nothing, acks nothing); the broker hands the job to another machine, which finishes it; the
monitor shows the cut-off machine offline and its job lost, then redelivered; after the heal
the machine is online again and takes new work (``--after`` jobs pinned to it).

Printed: ``partition: jobs=… finished=… lost=… duplicates=… recover=…`` plus what the monitor
showed (``offline_seen``, ``online_after``, ``job_statuses``) and whether the cut-off worker
ever reported the job done (``cutoff_done``).

    sudo python -m bench.chaos.partition --machines 2 --job-seconds 30 --cut 30
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from bench.chaos.drill import Observer, backend_states, summary_line
from bench.chaos.netns import Machine, Network
from bench.common import Process, RedisServer, child_env, free_port, monitor_process, wait_http, wait_until
from bench.s3 import MotoS3Server
from jobqueue.client.jobs import submit_job
from jobqueue.config import Settings
from jobqueue.transport.app import create_app
from jobqueue.up.procs import worker_command

#: Ports inside every machine (each namespace has its own loopback).
COMFYUI_PORT, COMFYUI_CONTROL_PORT = 8188, 8189


def sleep_workflow(seconds: int) -> dict[str, Any]:
    """A ComfyUI workflow that runs ``seconds`` one-second steps and saves a PNG."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 7}},
        "2": {"class_type": "HarnessSleepProgress", "inputs": {"image": ["1", 0], "steps": seconds, "delay": 1.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "partition"}},
    }


@dataclass
class Result:
    jobs: int
    finished: int
    duplicates: int
    recover: float | None
    cutoff_done: int
    offline_seen: bool
    online_after: bool
    lost_seen: bool
    redelivered_to: str
    after_on_cut_machine: int
    cut_machine: str = ""
    job_statuses: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def lost(self) -> int:
        return self.jobs - self.finished

    def line(self) -> str:
        return summary_line("partition", jobs=self.jobs, finished=self.finished, duplicates=self.duplicates,
                            recover=self.recover, cutoff_done=self.cutoff_done, offline_seen=self.offline_seen,
                            online_after=self.online_after, lost_seen=self.lost_seen, cut=self.cut_machine or "-",
                            redelivered_to=self.redelivered_to or "-", after_on_cut_machine=self.after_on_cut_machine,
                            job_statuses=",".join(self.job_statuses) or "-", seconds=round(self.seconds, 1))


def start_broker(network: Network, workdir: Path) -> tuple[Process, str]:
    """A private redis-server on the host's loopback and bridge address."""
    server = RedisServer(workdir=workdir, bind=("127.0.0.1", network.host_ip)).start(timeout=15)
    assert server.process is not None
    return server.process, f"redis://{network.host_ip}:{server.port}/0"


def machine_processes(machine: Machine, settings: Settings, s3: MotoS3Server, workdir: Path) -> list[Process]:
    """Start a machine's ComfyUI simulator and worker (inside its namespace)."""
    python = sys.executable
    sim = Process(machine.command([python, "-m", "jobqueue.sims.comfyui", "--host", "127.0.0.1",
                                   "--port", str(COMFYUI_PORT), "--control-port", str(COMFYUI_CONTROL_PORT),
                                   "--output-dir", str(workdir / f"{machine.name}-comfyui")]),
                  child_env(), workdir / f"{machine.name}-comfyui.log").start()
    worker = Process(machine.command(worker_command("gpu0")),
                     child_env(settings, **s3.aws_env()), workdir / f"{machine.name}-worker.log").start()
    return [sim, worker]


def monitor_state(base: str) -> dict[str, Any] | None:
    try:
        reply = requests.get(f"{base}/api/state?finished_limit=100", timeout=2)
        return dict(reply.json()) if reply.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None


def machine_status(state: dict[str, Any] | None, machine_id: str) -> str | None:
    for machine in (state or {}).get("machines", []):
        if machine.get("id") == machine_id:
            return str(machine.get("status"))
    return None


def job_status(base: str, job_id: str) -> tuple[str | None, str | None]:
    try:
        reply = requests.get(f"{base}/api/jobs/{job_id}", timeout=2)
        if reply.status_code != 200:
            return None, None
        job = reply.json()
        return job.get("status"), job.get("worker")
    except (requests.RequestException, ValueError):
        return None, None


def run(workdir: Path, *, machines: int = 2, job_seconds: int = 30, cut: float = 30.0, after: int = 2,
        cut_after: float = 4.0, timeout: float = 240.0) -> Result:
    """Run the drill in ``workdir`` (logs of every process stay there)."""
    started = time.monotonic()
    network = Network().open()
    processes: list[Process] = []
    s3: MotoS3Server | None = None
    observer: Observer | None = None
    app: Any = None
    try:
        broker, url = start_broker(network, workdir)
        processes.append(broker)
        s3 = MotoS3Server(host=network.host_ip, log_path=workdir / "moto.log").start()
        bucket = s3.bucket()
        base_settings = Settings(broker_url=url, result_backend=url, output_url=f"s3://{bucket}/partition",
                                 output_dir=str(workdir / "no-local-outputs"), connectors=("comfyui",),
                                 comfyui_url=f"http://127.0.0.1:{COMFYUI_PORT}",
                                 monitor_db=f"sqlite:///{workdir / 'monitor.db'}")
        app = create_app(base_settings.resolved())
        observer = Observer(app).start()
        port = free_port()
        monitor = monitor_process(base_settings.resolved(), port, workdir / "monitor.log", **s3.aws_env()).start()
        processes.append(monitor)
        base = f"http://127.0.0.1:{port}"
        nodes: dict[str, Machine] = {}
        for _ in range(machines):
            machine = network.add_machine()
            settings = base_settings.model_copy(update={"machine_id": machine.name}).resolved()
            processes.extend(machine_processes(machine, settings, s3, workdir))
            nodes[f"gpu0@{machine.name}"] = machine
        wait_http(f"{base}/healthz", monitor)

        def all_idle() -> bool:
            replies = app.control.broadcast("connector_status", reply=True, timeout=1.0) or []
            idle = {name for reply in replies for name, snap in reply.items()
                    if snap.get("connectors", {}).get("comfyui", {}).get("status") == "idle"}
            return idle >= set(nodes)

        wait_until(all_idle, 90, interval=0.5, what="every machine's worker with an idle ComfyUI")

        # The long job; wait until it runs, then cut its machine off.
        handle = submit_job("comfyui", {"workflow": sleep_workflow(job_seconds)}, app=app)
        running_on = wait_until(lambda: next((h for _, h in observer.jobs[handle.id].started), None)
                                if handle.id in observer.jobs else None, 60, interval=0.2, what="the job to start")
        victim = nodes[running_on]
        time.sleep(cut_after)  # let the job make progress on the victim first (drill timing, not sync)
        victim.cut()
        cut_at = time.monotonic()
        offline_seen = lost_seen = False
        statuses: list[str] = []
        while time.monotonic() - cut_at < cut:
            state = monitor_state(base)
            offline_seen = offline_seen or machine_status(state, victim.name) == "offline"
            status, worker = job_status(base, handle.id)
            if status and (not statuses or statuses[-1] != f"{status}@{worker}"):
                statuses.append(f"{status}@{worker}")
            lost_seen = lost_seen or status == "lost"
            time.sleep(0.5)
        victim.heal()

        # The job must end (elsewhere); the machine must come back and take new work.
        def job_done() -> bool:
            status, worker = job_status(base, handle.id)
            if status and (not statuses or statuses[-1] != f"{status}@{worker}"):
                statuses.append(f"{status}@{worker}")
            return backend_states(app, [handle.id])[handle.id] == "SUCCESS"

        wait_until(job_done, timeout, interval=0.5, what="the cut-off job to finish elsewhere")
        recover = time.monotonic() - cut_at
        online_after = bool(wait_until(lambda: machine_status(monitor_state(base), victim.name) == "online",
                                       60, interval=0.5, what="the healed machine back online"))
        later = [submit_job("comfyui", {"workflow": sleep_workflow(1)}, queue=f"machine.{victim.name}", app=app)
                 for _ in range(after)]
        results = [h.wait(timeout=120) for h in later]
        after_on_cut_machine = sum(1 for r in results if r.get("machine_id") == victim.name)
        final = handle.result()
        # Wait for the last events to arrive before counting (the healed worker's buffer).
        wait_until(lambda: all(observer.jobs[h.id].succeeded for h in later), 30, interval=0.2,
                   what="the events of the later jobs")
        ids = [handle.id, *(h.id for h in later)]
        counts = {job_id: len(observer.jobs[job_id].succeeded) for job_id in ids}
        victim_log = (workdir / f"{victim.name}-worker.log").read_text(errors="replace")
        cutoff_done = sum(1 for _, host in observer.jobs[handle.id].succeeded if host == f"gpu0@{victim.name}")
        cutoff_done += victim_log.count(f"Task jobqueue.run_job[{handle.id}] succeeded")
        states = backend_states(app, ids)
        return Result(jobs=len(ids), finished=sum(1 for s in states.values() if s == "SUCCESS"),
                      duplicates=sum(max(0, c - 1) for c in counts.values()), recover=recover,
                      cutoff_done=cutoff_done, offline_seen=offline_seen, online_after=online_after,
                      lost_seen=lost_seen, redelivered_to=str(final.get("worker", "")),
                      after_on_cut_machine=after_on_cut_machine, cut_machine=victim.name, job_statuses=statuses,
                      seconds=time.monotonic() - started)
    finally:
        if observer is not None:
            observer.stop()
        for process in reversed(processes):
            process.stop(timeout=10)
        if s3 is not None:
            s3.stop()
        if app is not None:
            app.close()
        network.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--machines", type=int, default=2)
    parser.add_argument("--job-seconds", type=int, default=30)
    parser.add_argument("--cut", type=float, default=30.0, help="seconds the machine stays cut off")
    parser.add_argument("--after", type=int, default=2, help="jobs pinned to the healed machine afterwards")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="partition-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result = run(workdir, machines=args.machines, job_seconds=args.job_seconds, cut=args.cut, after=args.after)
    print(result.line())
    print(f"logs: {workdir}")
    ok = (result.lost == 0 and result.duplicates == 0 and result.cutoff_done == 0 and result.offline_seen
          and result.online_after)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
