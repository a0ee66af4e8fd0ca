"""Chaos drill: cut one machine off the network mid-job; the job must finish exactly once.

Machines are Linux network namespaces on a bridge (:mod:`bench.chaos.netns`; needs root and
iproute2). Each runs a simulator of the drilled service (``--service comfyui``, the default, or
``a1111``: the WebUI) on its own loopback and one worker
(``celery -A jobqueue worker -Q gpu0``) whose outputs go to an S3 store. The broker (a private
``redis-server``), the store (moto's S3 server) and the monitor run on the host, on the
bridge's address.

The drill submits one long job (``--job-seconds``), waits until it runs, pulls the
cable of the machine running it for ``--cut`` seconds, then plugs it back in. Expected: the
cut-off worker cannot renew its lease, gives the job up (interrupts its prompt, reports
nothing, acks nothing); the broker hands the job to another machine, which finishes it; the
monitor shows the cut-off machine offline and its job lost, then redelivered; after the heal
the machine is online again and takes new work (``--after`` jobs pinned to it).

Printed: ``partition: jobs=… finished=… lost=… duplicates=… recover=…`` plus what the monitor
showed (``offline_seen``, ``online_after``, ``job_statuses``) and whether the cut-off worker
ever reported the job done (``cutoff_done``).

    sudo python -m bench.chaos.partition --machines 2 --job-seconds 30 --cut 30
    sudo python -m bench.chaos.partition --service a1111
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
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
A1111_PORT = 7860


def sleep_workflow(seconds: int) -> dict[str, Any]:
    """A ComfyUI workflow that runs ``seconds`` one-second steps and saves a PNG."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 7}},
        "2": {"class_type": "HarnessSleepProgress", "inputs": {"image": ["1", 0], "steps": seconds, "delay": 1.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "partition"}},
    }


def txt2img(seconds: int) -> dict[str, Any]:
    """A WebUI txt2img job of ``seconds`` sampling steps (the simulator runs one per second)."""
    return {"prompt": "partition drill", "steps": seconds, "width": 64, "height": 64, "seed": 7}


@dataclass(frozen=True)
class Service:
    """What the drill needs of one service: its simulator, its worker settings, a long job."""

    name: str
    port: int
    simulator: tuple[str, ...]
    long_job: Callable[[int], dict[str, Any]]

    def sim_command(self, control_port: int, output_dir: Path) -> list[str]:
        argv = [sys.executable, "-m", *self.simulator, "--host", "127.0.0.1", "--port", str(self.port),
                "--control-port", str(control_port)]
        if self.name == "comfyui":
            return [*argv, "--output-dir", str(output_dir)]
        return [*argv, "--step-seconds", "1.0"]

    def settings(self) -> dict[str, Any]:
        return {"connectors": (self.name,), f"{self.name}_url": f"http://127.0.0.1:{self.port}"}

    def payload(self, seconds: int) -> dict[str, Any]:
        job = self.long_job(seconds)
        return {"workflow": job} if self.name == "comfyui" else job


#: The services the drill knows, by name.
SERVICES = {
    "comfyui": Service("comfyui", COMFYUI_PORT, ("jobqueue.sims.comfyui",), sleep_workflow),
    "a1111": Service("a1111", A1111_PORT, ("jobqueue.sims.a1111",), txt2img),
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
    service: str = "comfyui"

    @property
    def lost(self) -> int:
        return self.jobs - self.finished

    def line(self) -> str:
        return summary_line("partition", service=self.service, jobs=self.jobs, finished=self.finished, duplicates=self.duplicates,
                            recover=self.recover, cutoff_done=self.cutoff_done, offline_seen=self.offline_seen,
                            online_after=self.online_after, lost_seen=self.lost_seen, cut=self.cut_machine or "-",
                            redelivered_to=self.redelivered_to or "-", after_on_cut_machine=self.after_on_cut_machine,
                            job_statuses=",".join(self.job_statuses) or "-", seconds=round(self.seconds, 1))


def start_broker(network: Network, workdir: Path) -> tuple[Process, str]:
    """A private redis-server on the host's loopback and bridge address."""
    server = RedisServer(workdir=workdir, bind=("127.0.0.1", network.host_ip)).start(timeout=15)
    assert server.process is not None
    return server.process, f"redis://{network.host_ip}:{server.port}/0"


def machine_processes(machine: Machine, settings: Settings, s3: MotoS3Server, workdir: Path,
                      service: Service = SERVICES["comfyui"]) -> list[Process]:
    """Start a machine's simulator of ``service`` and its worker (inside its namespace)."""
    sim = Process(machine.command(service.sim_command(COMFYUI_CONTROL_PORT, workdir / f"{machine.name}-sim")),
                  child_env(), workdir / f"{machine.name}-{service.name}.log").start()
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


@dataclass
class Fleet:
    """The drill's processes: broker, store, monitor and the machines (namespaces)."""

    network: Network
    service: Service
    processes: list[Process] = field(default_factory=list)
    s3: MotoS3Server | None = None
    observer: Observer | None = None
    app: Any = None
    base: str = ""
    nodes: dict[str, Machine] = field(default_factory=dict)

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()
        for process in reversed(self.processes):
            process.stop(timeout=10)
        if self.s3 is not None:
            self.s3.stop()
        if self.app is not None:
            self.app.close()
        self.network.close()


def start_fleet(fleet: Fleet, workdir: Path, machines: int) -> None:
    """Broker, S3 store, event observer and monitor on the host; ``machines`` machines."""
    broker, url = start_broker(fleet.network, workdir)
    fleet.processes.append(broker)
    fleet.s3 = s3 = MotoS3Server(host=fleet.network.host_ip, log_path=workdir / "moto.log").start()
    base_settings = Settings(broker_url=url, result_backend=url, output_url=f"s3://{s3.bucket()}/partition",
                             output_dir=str(workdir / "no-local-outputs"),
                             monitor_db=f"sqlite:///{workdir / 'monitor.db'}", **fleet.service.settings())
    fleet.app = create_app(base_settings.resolved())
    fleet.observer = Observer(fleet.app).start()
    port = free_port()
    monitor = monitor_process(base_settings.resolved(), port, workdir / "monitor.log", **s3.aws_env()).start()
    fleet.processes.append(monitor)
    fleet.base = f"http://127.0.0.1:{port}"
    for _ in range(machines):
        machine = fleet.network.add_machine()
        settings = base_settings.model_copy(update={"machine_id": machine.name}).resolved()
        fleet.processes.extend(machine_processes(machine, settings, s3, workdir, fleet.service))
        fleet.nodes[f"gpu0@{machine.name}"] = machine
    wait_http(f"{fleet.base}/healthz", monitor)

    def all_idle() -> bool:
        replies = fleet.app.control.broadcast("connector_status", reply=True, timeout=1.0) or []
        idle = {name for reply in replies for name, snap in reply.items()
                if snap.get("connectors", {}).get(fleet.service.name, {}).get("status") == "idle"}
        return idle >= set(fleet.nodes)

    wait_until(all_idle, 90, interval=0.5, what=f"every machine's worker with an idle {fleet.service.name}")


def _note(statuses: list[str], base: str, job_id: str) -> str | None:
    """Append the job's monitor status to ``statuses`` when it changed; return it."""
    status, worker = job_status(base, job_id)
    if status and (not statuses or statuses[-1] != f"{status}@{worker}"):
        statuses.append(f"{status}@{worker}")
    return status


def cut_off(fleet: Fleet, victim: Machine, job_id: str, cut: float, statuses: list[str]) -> tuple[bool, bool]:
    """Cut ``victim`` off for ``cut`` s, watching the monitor; heal it. Returns whether the
    monitor showed the machine offline, and the job lost."""
    victim.cut()
    cut_at = time.monotonic()
    offline_seen = lost_seen = False
    while time.monotonic() - cut_at < cut:
        offline_seen = offline_seen or machine_status(monitor_state(fleet.base), victim.name) == "offline"
        lost_seen = _note(statuses, fleet.base, job_id) == "lost" or lost_seen
        time.sleep(0.5)
    victim.heal()
    return offline_seen, lost_seen


def after_the_heal(fleet: Fleet, victim: Machine, job_id: str, after: int, timeout: float,
                   statuses: list[str]) -> tuple[list[Any], int, float]:
    """The cut-off job must end (elsewhere); the machine must come back online and take
    ``after`` jobs pinned to it. Returns the later handles, how many ran on the machine and
    when (monotonic) the cut-off job was seen done."""
    app, observer = fleet.app, fleet.observer
    assert observer is not None
    wait_until(lambda: (_note(statuses, fleet.base, job_id), backend_states(app, [job_id])[job_id] == "SUCCESS")[1],
               timeout, interval=0.5, what="the cut-off job to finish elsewhere")
    done_at = time.monotonic()
    wait_until(lambda: machine_status(monitor_state(fleet.base), victim.name) == "online",
               60, interval=0.5, what="the healed machine back online")
    later = [submit_job(fleet.service.name, fleet.service.payload(1), queue=f"machine.{victim.name}", app=app)
             for _ in range(after)]
    results = [h.wait(timeout=120) for h in later]
    # Wait for the last events to arrive before counting (the healed worker's buffer).
    wait_until(lambda: all(observer.jobs[h.id].succeeded for h in later), 30, interval=0.2,
               what="the events of the later jobs")
    return later, sum(1 for r in results if r.get("machine_id") == victim.name), done_at


def run(workdir: Path, *, machines: int = 2, job_seconds: int = 30, cut: float = 30.0, after: int = 2,
        cut_after: float = 4.0, timeout: float = 240.0, service: str = "comfyui") -> Result:
    """Run the drill in ``workdir`` (logs of every process stay there)."""
    started = time.monotonic()
    fleet = Fleet(Network().open(), SERVICES[service])
    try:
        start_fleet(fleet, workdir, machines)
        app, observer = fleet.app, fleet.observer
        assert observer is not None
        # The long job; wait until it runs, then cut its machine off.
        handle = submit_job(service, fleet.service.payload(job_seconds), app=app)
        running_on = wait_until(lambda: next((h for _, h, *_ in observer.jobs[handle.id].started), None)
                                if handle.id in observer.jobs else None, 60, interval=0.2, what="the job to start")
        victim = fleet.nodes[running_on]
        time.sleep(cut_after)  # let the job make progress on the victim first (drill timing, not sync)
        statuses: list[str] = []
        cut_at = time.monotonic()
        offline_seen, lost_seen = cut_off(fleet, victim, handle.id, cut, statuses)
        later, on_victim, done_at = after_the_heal(fleet, victim, handle.id, after, timeout, statuses)
        recover = done_at - cut_at
        ids = [handle.id, *(h.id for h in later)]
        counts = {job_id: len(observer.jobs[job_id].succeeded) for job_id in ids}
        victim_log = (workdir / f"{victim.name}-worker.log").read_text(errors="replace")
        cutoff_done = sum(1 for _, host, *_ in observer.jobs[handle.id].succeeded if host == f"gpu0@{victim.name}")
        cutoff_done += victim_log.count(f"Task jobqueue.run_job[{handle.id}] succeeded")
        states = backend_states(app, ids)
        return Result(jobs=len(ids), finished=sum(1 for s in states.values() if s == "SUCCESS"),
                      duplicates=sum(max(0, c - 1) for c in counts.values()), recover=recover,
                      cutoff_done=cutoff_done, offline_seen=offline_seen, online_after=True,
                      lost_seen=lost_seen, redelivered_to=str(handle.result().get("worker", "")),
                      after_on_cut_machine=on_victim, cut_machine=victim.name, job_statuses=statuses,
                      seconds=time.monotonic() - started, service=service)
    finally:
        fleet.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--service", choices=sorted(SERVICES), default="comfyui", help="the service drilled")
    parser.add_argument("--machines", type=int, default=2)
    parser.add_argument("--job-seconds", type=int, default=30)
    parser.add_argument("--cut", type=float, default=30.0, help="seconds the machine stays cut off")
    parser.add_argument("--after", type=int, default=2, help="jobs pinned to the healed machine afterwards")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="partition-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result = run(workdir, machines=args.machines, job_seconds=args.job_seconds, cut=args.cut, after=args.after,
                 service=args.service)
    print(result.line())
    print(f"logs: {workdir}")
    ok = (result.lost == 0 and result.duplicates == 0 and result.cutoff_done == 0 and result.offline_seen
          and result.online_after)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
