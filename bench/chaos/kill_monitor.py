"""Chaos drill: SIGKILL the monitor mid-run and restart it; its state must then equal the
state of a monitor that never died.

Two monitors watch the same broker, each with its own SQLite file: the *reference* runs
throughout, the *victim* is SIGKILLed once a third of the jobs finished, stays down for
``--down`` seconds (events sent meanwhile never reach it) and is restarted on the same
database. After the last job both must show the same thing: every job with the same status,
worker, service and attempt, every worker with the same status and connector statuses.
Recovery = from the restart until the victim's state equals the reference's.

    python -m bench.chaos.kill_monitor --jobs 60 --down 3
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from bench.chaos.drill import Fleet, Observer, backend_states, finished, summary_line
from bench.common import (
    Process,
    RedisServer,
    bench_settings,
    free_port,
    monitor_process,
    wait_http,
    wait_until,
)
from jobqueue.client.jobs import submit_job
from jobqueue.config import Settings
from jobqueue.transport.app import create_app


def comparable_state(port: int) -> dict[str, Any]:
    """The parts of a monitor's ``/api/state`` that must match between two monitors."""
    body = requests.get(f"http://127.0.0.1:{port}/api/state", params={"finished_limit": 100000}, timeout=30).json()
    jobs = {j["id"]: (j.get("status"), j.get("worker"), j.get("service"), j.get("attempt"))
            for j in body.get("jobs", [])}
    workers = {w["name"]: (w.get("status"), w.get("machine_id"), w.get("gpu"),
                           tuple(sorted((s, c.get("status")) for s, c in (w.get("connectors") or {}).items())))
               for w in body.get("workers", [])}
    return {"jobs": jobs, "workers": workers}


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Human-readable differences between two :func:`comparable_state` results."""
    out = []
    for kind in ("jobs", "workers"):
        for key in sorted(set(a[kind]) | set(b[kind])):
            if a[kind].get(key) != b[kind].get(key):
                out.append(f"{kind[:-1]} {key}: reference={a[kind].get(key)} restarted={b[kind].get(key)}")
    return out


@dataclass
class Result:
    jobs: int
    finished: int
    duplicates: int
    recover: float | None
    mismatches: list[str]
    seconds: float

    def line(self) -> str:
        return summary_line("kill-monitor", jobs=self.jobs, finished=self.finished, duplicates=self.duplicates,
                            recover=self.recover, state_mismatches=len(self.mismatches),
                            seconds=round(self.seconds, 1))


class _Monitor:
    def __init__(self, settings: Settings, workdir: Path, name: str) -> None:
        self.port = free_port()
        self.settings = bench_settings(settings.broker_url, workdir, machine_id=settings.machine_id,
                                       monitor_db=f"sqlite:///{workdir / f'{name}.db'}")
        self.workdir = workdir
        self.name = name
        self.process: Process | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = self.workdir / f"{self.name}-{self.starts}.log"
        self.process = monitor_process(self.settings, self.port, log).start()
        wait_http(f"http://127.0.0.1:{self.port}/healthz", self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def run(url: str, workdir: Path, *, jobs: int = 60, workers: int = 2, down: float = 3.0, steps: int = 3,
        step_seconds: float = 0.2, timeout: float = 180.0) -> Result:
    settings = bench_settings(url, workdir)
    app = create_app(settings)
    fleet = Fleet(app, settings, workdir, size=workers)
    observer = Observer(app).start()
    reference = _Monitor(settings, workdir, "reference")
    victim = _Monitor(settings, workdir, "victim")
    started = time.monotonic()
    try:
        reference.start()
        victim.start()
        fleet.start_all()
        ids = [submit_job("simulation", {"steps": steps, "step_seconds": step_seconds}, app=app).id
               for _ in range(jobs)]
        wait_until(lambda: finished(app, ids) >= jobs // 3, timeout, interval=0.1, what="a third of the jobs")
        assert victim.process is not None
        victim.process.signal(signal.SIGKILL)
        time.sleep(down)  # the outage itself, not a synchronisation
        victim.start()
        restarted_at = time.monotonic()
        wait_until(lambda: all(s == "SUCCESS" for s in backend_states(app, ids).values()), timeout,
                   interval=0.2, what="every job to succeed")
        recover: float | None = None
        mismatches: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ref, got = comparable_state(reference.port), comparable_state(victim.port)
            mismatches = differences(ref, got)
            if not mismatches and all(ref["jobs"].get(i, (None,))[0] == "completed" for i in ids):
                recover = time.monotonic() - restarted_at
                break
            time.sleep(0.5)
        return Result(jobs=jobs, finished=finished(app, ids), duplicates=observer.counts()["duplicates"],
                      recover=recover, mismatches=mismatches, seconds=time.monotonic() - started)
    finally:
        observer.stop()
        fleet.stop()
        reference.stop()
        victim.stop()
        app.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--down", type=float, default=3.0, help="seconds the monitor stays down")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="chaos-monitor-"))
    server = RedisServer().start()
    try:
        result = run(server.url(0), workdir, jobs=args.jobs, workers=args.workers, down=args.down)
    finally:
        server.stop()
    print(result.line())
    for line in result.mismatches[:20]:
        print("  " + line)
    print(f"(logs in {workdir})")
    return 0 if not result.mismatches and result.finished == result.jobs else 1


if __name__ == "__main__":
    sys.exit(main())
