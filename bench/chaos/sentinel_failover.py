"""Chaos drill: SIGKILL the Redis master of a Sentinel group mid-run; the replica takes over.

The drill starts one master, one replica and three sentinels on free ports
(:class:`bench.sentinels.SentinelGroup`, ``down-after-milliseconds`` ``--down-after``), two
real workers and the monitor on ``sentinel://...`` (broker and result backend, Redis ``WAIT``
on), submits ``--jobs`` simulation jobs, and once a quarter of them finished SIGKILLs the
master while a client keeps submitting one job every 0.1 s. Measured, from the kill:

* ``promoted``: the sentinels name the replica as master;
* ``workers_back``: every worker answers a ping again; ``monitor_back``: the monitor's
  collector consumes again; ``clients_back``: a client's ``submit_job()`` returns again (the
  first success after the last failure) -- each within ``down-after`` + 10 s;
* ``lost``: jobs whose ``submit_job()`` returned and that never succeeded (result backend);
  ``duplicates``: jobs that succeeded twice (two ``task-succeeded`` events); ``reruns``: jobs
  started twice (a copy whose acknowledgement was lost in the switch, dropped at start when the
  job had already succeeded, or an attempt cut by the failover);
* ``mismatches``: jobs where the monitor's final state differs from the result backend's
  (status, worker, machine, attempt, times, result), after its truth repair.

    python -m bench.chaos.sentinel_failover --jobs 300
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from bench.chaos.drill import Fleet, Observer, summary_line
from bench.chaos.restart_redis import _healthz, _monitor_back, _workers_back
from bench.common import Process, bench_settings, free_port, monitor_process, wait_http, wait_until
from bench.sentinels import MASTER_NAME, SentinelGroup
from jobqueue.client.jobs import submit_job
from jobqueue.shared import job_record
from jobqueue.states import job_status_from_celery
from jobqueue.transport.app import create_app

#: The simulated job every drill submits.
PAYLOAD = {"steps": 2, "step_seconds": 0.02}


@dataclass
class Result:
    jobs: int
    refused: int
    finished: int
    duplicates: int
    reruns: int
    promoted: float | None
    workers_back: float | None
    monitor_back: float | None
    clients_back: float | None
    bound: float
    mismatches: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def lost(self) -> int:
        return self.jobs - self.finished

    @property
    def recover(self) -> float | None:
        times = [self.workers_back, self.monitor_back, self.clients_back]
        return None if any(t is None for t in times) else max(t for t in times if t is not None)

    def line(self) -> str:
        def f(v: float | None) -> str:
            return "never" if v is None else f"{v:.1f}s"

        return summary_line("sentinel-failover", jobs=self.jobs, finished=self.finished, duplicates=self.duplicates,
                            recover=self.recover, refused=self.refused, reruns=self.reruns,
                            promoted=f(self.promoted), workers_back=f(self.workers_back),
                            monitor_back=f(self.monitor_back), clients_back=f(self.clients_back),
                            bound=f"{self.bound:.0f}s", mismatches=len(self.mismatches),
                            seconds=round(self.seconds, 1))


class Prober:
    """A client submitting one job every ``interval`` s until stopped: which submits returned
    (their jobs must run) and when submitting failed and came back."""

    def __init__(self, app: Any, interval: float = 0.1) -> None:
        self.app = app
        self.interval = interval
        self.accepted: list[str] = []
        self.failures: list[float] = []
        self.successes: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drill-prober", daemon=True)

    def start(self) -> Prober:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                job_id = submit_job("simulation", dict(PAYLOAD), app=self.app).id
            except Exception:
                self.failures.append(time.monotonic())
            else:
                self.accepted.append(job_id)
                self.successes.append(time.monotonic())
            self._stop.wait(self.interval)

    def back_after(self, killed_at: float) -> float | None:
        """Seconds from ``killed_at`` to the first submit that returned after the last failure."""
        last_failure = max(self.failures, default=killed_at)
        after = [t for t in self.successes if t > last_failure and t > killed_at]
        return min(after) - killed_at if after else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def backend_truth(app: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Each job as the result backend holds it: Celery's record and jobqueue's facts."""
    backend = app.backend
    client = backend.client
    metas = client.mget([backend.get_key_for_task(i) for i in ids])
    facts = job_record.read_many(client, ids)
    truth: dict[str, dict[str, Any]] = {}
    for job_id, raw in zip(ids, metas, strict=True):
        meta = backend.decode_result(raw) if raw else {"status": "PENDING"}
        fact = facts.get(job_id, {})
        truth[job_id] = {
            "status": job_status_from_celery(meta["status"]).value, "result": meta.get("result"),
            "worker": fact.get("worker"), "machine_id": fact.get("machine_id"), "attempt": fact.get("attempt"),
            "started_at": fact.get("started_at"), "finished_at": fact.get("finished_at"),
            "runtime": fact.get("runtime")}
    return truth


def state_mismatches(app: Any, port: int, ids: list[str]) -> list[str]:
    """Jobs whose monitor state differs from the result backend, field by field."""
    body = requests.get(f"http://127.0.0.1:{port}/api/state", params={"finished_limit": 100000}, timeout=30).json()
    shown = {j["id"]: j for j in body.get("jobs", [])}
    out = []
    for job_id, truth in backend_truth(app, ids).items():
        job = shown.get(job_id)
        if job is None:
            out.append(f"{job_id}: not in the monitor (backend: {truth['status']})")
            continue
        for name, want in truth.items():
            got = job.get(name)
            same = (abs(got - want) < 1e-3 if isinstance(got, float) and isinstance(want, float) else got == want)
            if not same:
                out.append(f"{job_id} {name}: monitor={got!r} backend={want!r}")
    return out


def _succeeded(app: Any, ids: list[str]) -> int:
    try:
        return sum(1 for t in backend_truth(app, ids).values() if t["status"] == "completed")
    except Exception:  # the backend may be failing over: not yet
        return -1


def run(group: SentinelGroup, workdir: Path, *, jobs: int = 300, workers: int = 2,
        timeout: float = 180.0) -> Result:
    """Run the drill on a started ``group``."""
    settings = bench_settings(group.url(0), workdir, redis_master_name=MASTER_NAME)
    bound = group.down_after_ms / 1000.0 + 10.0
    app = create_app(settings)
    fleet = Fleet(app, settings, workdir, size=workers)
    observer = Observer(app).start()
    port = free_port()
    monitor: Process = monitor_process(settings, port, workdir / "monitor.log").start()
    prober: Prober | None = None
    started = time.monotonic()
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", monitor)
        fleet.start_all()
        ids = [submit_job("simulation", dict(PAYLOAD), app=app).id for _ in range(jobs)]
        wait_until(lambda: _succeeded(app, ids) >= jobs // 4, timeout, interval=0.1, what="a quarter of the jobs")
        reconnects = (_healthz(port).get("collector") or {}).get("reconnects", 0)
        prober = Prober(create_app(settings)).start()
        old_port = group.master_port_now()
        assert old_port is not None
        killed_at = group.kill_master()
        # Promotion, workers, monitor and clients are watched side by side, each from the kill.
        with ThreadPoolExecutor(3) as pool:
            workers = pool.submit(_workers_back, app, fleet, killed_at, 60.0)
            shown = pool.submit(_monitor_back, port, reconnects, killed_at, 60.0)
            promoted = group.wait_promoted(old_port, timeout=60.0)  # counted from just after the kill
            wait_until(lambda: prober.back_after(killed_at) is not None, 60.0, interval=0.1, what="a client")
            clients_back = prober.back_after(killed_at)
            workers_back, monitor_back = workers.result(), shown.result()
        time.sleep(1.0)  # the prober keeps submitting on the new master for a moment (load, not sync)
        prober.stop()
        accepted = ids + prober.accepted
        try:
            wait_until(lambda: _succeeded(app, accepted) == len(accepted), timeout, interval=0.2,
                       what="every accepted job to succeed")
        except TimeoutError:
            pass
        mismatches: list[str] = []
        try:
            wait_until(lambda: not state_mismatches(app, port, accepted), 60.0, interval=1.0)
        except TimeoutError:
            mismatches = state_mismatches(app, port, accepted)
        counts = observer.counts()
        return Result(jobs=len(accepted), refused=len(prober.failures), finished=max(0, _succeeded(app, accepted)),
                      duplicates=counts["duplicates"], reruns=counts["reruns"], promoted=promoted,
                      workers_back=workers_back, monitor_back=monitor_back, clients_back=clients_back, bound=bound,
                      mismatches=mismatches, seconds=time.monotonic() - started)
    finally:
        if prober is not None:
            prober.stop()
            prober.app.close()
        observer.stop()
        fleet.stop()
        monitor.stop()
        app.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--down-after", type=int, default=1000, help="sentinels' down-after-milliseconds")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds for every job to finish")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="chaos-sentinel-"))
    group = SentinelGroup(down_after_ms=args.down_after, workdir=workdir / "redis").start()
    try:
        result = run(group, workdir, jobs=args.jobs, workers=args.workers, timeout=args.timeout)
    finally:
        group.stop()
    print(result.line())
    for line in result.mismatches[:20]:
        print("  ", line)
    print(f"(logs in {workdir})")
    ok = (result.lost == 0 and result.duplicates == 0 and not result.mismatches and result.recover is not None
          and result.recover <= result.bound)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
