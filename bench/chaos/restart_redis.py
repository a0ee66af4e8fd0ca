"""Chaos drill: restart Redis (broker + result backend) in the middle of a run.

The drill starts its own ``redis-server`` with ``appendonly yes`` in a temporary directory,
2 real workers and the monitor (``python -m monitor.server``) on it, submits ``--jobs``
simulation jobs, and once a quarter of them finished SIGKILLs Redis, leaves it down for
``--down`` seconds and starts it again on the same port and data directory. Measured: how long
after Redis is back each worker answers a ping again and the monitor's collector is
consuming again (target: within 10 s), and that every job succeeds (result backend) and the
monitor shows every job completed.

    python -m bench.chaos.restart_redis --jobs 60 --down 2
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
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
from jobqueue.transport.app import create_app


@dataclass
class Result:
    jobs: int
    finished: int
    duplicates: int
    reruns: int
    workers_back: float | None
    monitor_back: float | None
    monitor_completed: int | None
    seconds: float

    @property
    def recover(self) -> float | None:
        times = [t for t in (self.workers_back, self.monitor_back) if t is not None]
        return max(times) if times else None

    @property
    def lost(self) -> int:
        return self.jobs - self.finished

    def line(self) -> str:
        def f(v: float | None) -> str:
            return "never" if v is None else f"{v:.1f}s"

        return summary_line("restart-redis", jobs=self.jobs, finished=self.finished, duplicates=self.duplicates,
                            recover=self.recover, reruns=self.reruns, workers_back=f(self.workers_back),
                            monitor_back=f(self.monitor_back), monitor_completed=self.monitor_completed,
                            seconds=round(self.seconds, 1))


def _healthz(port: int) -> dict[str, Any]:
    try:
        return dict(requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json())
    except (requests.RequestException, ValueError):
        return {}


def monitor_completed(port: int, job_ids: list[str]) -> int:
    """How many of ``job_ids`` the monitor's API shows as completed."""
    done = 0
    for job_id in job_ids:
        try:
            response = requests.get(f"http://127.0.0.1:{port}/api/jobs/{job_id}", timeout=5)
        except requests.RequestException:
            continue
        if response.status_code == 200 and response.json().get("status") == "completed":
            done += 1
    return done


def run(server: RedisServer, workdir: Path, *, jobs: int = 60, workers: int = 2, down: float = 2.0,
        steps: int = 3, step_seconds: float = 0.2, timeout: float = 120.0, with_monitor: bool = True) -> Result:
    """Run the drill on ``server`` (which must have been started with ``appendonly=True``)."""
    url = server.url(0)
    settings = bench_settings(url, workdir)
    app = create_app(settings)
    fleet = Fleet(app, settings, workdir, size=workers)
    observer = Observer(app).start()
    monitor: Process | None = None
    port = free_port()
    started = time.monotonic()
    ids: list[str] = []
    try:
        if with_monitor:
            monitor = monitor_process(settings, port, workdir / "monitor.log").start()
            wait_http(f"http://127.0.0.1:{port}/healthz", monitor)
        fleet.start_all()
        ids = [submit_job("simulation", {"steps": steps, "step_seconds": step_seconds}, app=app).id
               for _ in range(jobs)]
        wait_until(lambda: finished(app, ids) >= jobs // 4, timeout, interval=0.1, what="a quarter of the jobs")
        reconnects_before = (_healthz(port).get("collector") or {}).get("reconnects", 0) if monitor else 0
        server.kill()
        time.sleep(down)  # the outage itself, not a synchronisation
        server.start()
        back_at = time.monotonic()
        workers_back = _workers_back(app, fleet, back_at, timeout=60.0)
        monitor_back = _monitor_back(port, reconnects_before, back_at, timeout=60.0) if monitor else None
        try:
            wait_until(lambda: all(s == "SUCCESS" for s in backend_states(app, ids).values()), timeout,
                       interval=0.2, what="every job to succeed")
        except TimeoutError:
            _explain_unfinished(app, ids, workdir, fleet)
        counts = observer.counts()
        shown = None
        if monitor:
            try:
                wait_until(lambda: monitor_completed(port, ids) == jobs, 30, interval=0.5)
            except TimeoutError:
                pass
            shown = monitor_completed(port, ids)
        return Result(jobs=jobs, finished=finished(app, ids), duplicates=counts["duplicates"],
                      reruns=counts["reruns"], workers_back=workers_back, monitor_back=monitor_back,
                      monitor_completed=shown, seconds=time.monotonic() - started)
    finally:
        observer.stop()
        fleet.stop()
        if monitor is not None:
            monitor.stop()
        app.close()


def _explain_unfinished(app: Any, ids: list[str], workdir: Path, fleet: Fleet | None = None) -> None:
    """Write what the broker says about jobs that never finished to ``workdir/unfinished.txt``."""
    states = backend_states(app, ids)
    client = app.backend.client
    lines = [f"{job_id} {state}" for job_id, state in states.items() if state != "SUCCESS"]
    unacked = client.hgetall("unacked")
    lines.append(f"now {time.time():.1f}")
    for tag, raw in unacked.items():
        lines.append(f"unacked {tag!r} (index score {client.zscore('unacked_index', tag)}): {raw[:300]!r}")
    for key in client.keys("*"):
        if client.type(key) == b"list":
            lines.append(f"list {key!r}: {client.llen(key)}")
    try:
        inspect = app.control.inspect(timeout=2.0)
        lines.append(f"active: {inspect.active()!r}")
        lines.append(f"reserved: {inspect.reserved()!r}")
    except Exception as exc:  # diagnostics only
        lines.append(f"inspect failed: {exc!r}")
    spy = shutil.which("py-spy")
    for process in (fleet.workers.values() if fleet is not None and spy is not None else ()):
        assert spy is not None
        dump = subprocess.run([spy, "dump", "--pid", str(process.pid)], capture_output=True, text=True,
                              timeout=60, check=False)
        lines.append(f"py-spy dump {process.pid}:\n{dump.stdout}{dump.stderr}")
    (workdir / "unfinished.txt").write_text("\n".join(lines))


def _workers_back(app: Any, fleet: Fleet, back_at: float, timeout: float) -> float | None:
    """Seconds from ``back_at`` until every worker answers a ping again."""
    names = {fleet.node_name(gpu) for gpu in range(fleet.size)}

    def all_answer() -> bool:
        try:
            replies = app.control.ping(destination=sorted(names), timeout=0.5) or []
        except Exception:
            return False
        return names <= {name for reply in replies for name in reply}

    try:
        wait_until(all_answer, timeout, interval=0.1)
    except TimeoutError:
        return None
    return time.monotonic() - back_at


def _monitor_back(port: int, reconnects_before: int, back_at: float, timeout: float) -> float | None:
    """Seconds from ``back_at`` until the monitor's collector has reconnected and consumes."""

    def reconnected() -> bool:
        collector = _healthz(port).get("collector") or {}
        return bool(collector.get("connected")) and collector.get("reconnects", 0) > reconnects_before

    try:
        wait_until(reconnected, timeout, interval=0.1)
    except TimeoutError:
        return None
    return time.monotonic() - back_at


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--down", type=float, default=2.0, help="seconds Redis stays down")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for every job to finish")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="chaos-redis-"))
    server = RedisServer(appendonly=True).start()
    try:
        result = run(server, workdir, jobs=args.jobs, workers=args.workers, down=args.down, timeout=args.timeout)
    finally:
        server.stop()
    print(result.line())
    print(f"(logs in {workdir})")
    ok = result.lost == 0 and result.recover is not None and result.recover <= 10.0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
