"""Chaos drill: two monitors on one PostgreSQL store; SIGKILL the one that writes mid-burst.

Both monitors run with ``JOBQUEUE_MONITOR_STANDBY=auto`` on one fresh PostgreSQL database:
the first to start holds the writer's lease, the other stands by (serves pages, API and
websockets from the store, buffers the events it receives). Two real workers run ``--jobs``
simulation jobs; one dashboard (``/ws``) is open on each monitor. Once a quarter of the jobs
finished the leader is SIGKILLed (its whole process group). Measured, from the kill:

* ``takeover``: the standby's ``/healthz`` says ``role: leader``; ``first_write``: its store's
  seq moves again (the first write after the kill) -- each must be within 10 s;
* ``wrong``: jobs whose state in the store differs from the result backend, field by field
  (status, worker, machine, attempt, times, result), once every job succeeded and repair ran;
* ``live``: deltas the standby's dashboard got before and after the kill, and those the
  killed monitor's dashboard got after it reconnected to the survivor (as behind a load
  balancer, with ``?since=`` its last seq);
* ``lost`` / ``duplicates``: jobs that never succeeded / succeeded twice.

With ``--pause`` the leader is SIGSTOPped instead, and SIGCONTed once the standby took over:
it must then find it lost the lease (``old_role``: ``standby``) and write nothing more (its
writes fail on the lease's term).

    python -m bench.chaos.standby_monitor --jobs 500 [--pause]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket

from bench.chaos.drill import Fleet, Observer, summary_line
from bench.chaos.restart_redis import _healthz
from bench.chaos.sentinel_failover import _succeeded, state_mismatches
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

#: The simulated job every drill submits.
PAYLOAD = {"steps": 1, "step_seconds": 0.01}
#: Where the drill creates (and drops) its database.
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A PostgreSQL database of its own (``jq_standby_<random>``), dropped afterwards."""
    import psycopg

    name = f"jq_standby_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        try:
            yield f"{base}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Dashboard:
    """One ``/ws`` client in a thread: counts the deltas it gets, by time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.deltas: list[tuple[float, int]] = []
        self.snapshots = 0
        self.last_seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Dashboard:
        self._thread.start()
        return self

    def move_to(self, port: int) -> None:
        """Reconnect to another monitor (what a load balancer does when one dies)."""
        self.port = port

    def after(self, t: float) -> int:
        return sum(1 for at, _ in self.deltas if at >= t)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                since = f"?since={self.last_seq}" if self.last_seq else ""
                ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws{since}", timeout=2)
            except (OSError, websocket.WebSocketException):
                self._stop.wait(0.2)
                continue
            try:
                while not self._stop.is_set():
                    try:
                        message = json.loads(ws.recv())
                    except websocket.WebSocketTimeoutException:
                        continue
                    if message.get("type") == "snapshot":
                        self.snapshots += 1
                    elif message.get("type") == "delta":
                        self.deltas.append((time.monotonic(), int(message["seq"])))
                    self.last_seq = int(message.get("seq") or self.last_seq)
            except (OSError, websocket.WebSocketException, ValueError):
                self._stop.wait(0.2)
            finally:
                ws.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@dataclass
class Result:
    jobs: int
    finished: int
    duplicates: int
    takeover: float | None
    first_write: float | None
    mismatches: list[str]
    live: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    #: With ``pause``: the paused leader's role once resumed (it must have become the standby).
    old_role: str | None = None

    def line(self) -> str:
        def f(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.1f}s"

        return summary_line("standby-monitor", jobs=self.jobs, finished=self.finished, duplicates=self.duplicates,
                            recover=self.first_write, takeover=f(self.takeover), first_write=f(self.first_write),
                            wrong=len(self.mismatches), **self.live, old_role=self.old_role,
                            seconds=round(self.seconds, 1))


def _role(port: int) -> str | None:
    return _healthz(port).get("role")


def _since(start: float, timeout: float, check: Any) -> float | None:
    try:
        wait_until(check, timeout, interval=0.1)
    except TimeoutError:
        return None
    return time.monotonic() - start


def run(url: str, pg: str, workdir: Path, *, jobs: int = 500, workers: int = 2, lease: float = 3.0,
        timeout: float = 240.0, pause: bool = False) -> Result:
    """Run the drill on the broker ``url`` and the empty PostgreSQL database ``pg`` (``pause``:
    SIGSTOP the leader, SIGCONT it after the take-over, instead of SIGKILL)."""
    settings = bench_settings(url, workdir, monitor_db=pg, monitor_standby="auto", monitor_lease_seconds=lease)
    app = create_app(settings)
    fleet = Fleet(app, settings, workdir, size=workers)
    observer = Observer(app).start()
    ports = [free_port(), free_port()]
    monitors: list[Process] = []
    dashboards: list[Dashboard] = []
    started = time.monotonic()
    try:
        for i, port in enumerate(ports):  # one after the other: the first takes the lease
            monitors.append(monitor_process(settings, port, workdir / f"monitor-{i}.log").start())
            wait_http(f"http://127.0.0.1:{port}/healthz", monitors[-1])
        wait_until(lambda: {_role(p) for p in ports} == {"leader", "standby"}, 30, interval=0.1,
                   what="one leader and one standby")
        leader = 0 if _role(ports[0]) == "leader" else 1
        survivor = ports[1 - leader]
        dashboards = [Dashboard(p).start() for p in ports]
        fleet.start_all()
        ids = [submit_job("simulation", dict(PAYLOAD), app=app).id for _ in range(jobs)]
        wait_until(lambda: _succeeded(app, ids) >= jobs // 4, timeout, interval=0.1, what="a quarter of the jobs")
        seq_before = int(_healthz(survivor).get("seq") or 0)
        killed_at = time.monotonic()
        monitors[leader].signal(signal.SIGSTOP if pause else signal.SIGKILL)
        dashboards[leader].move_to(survivor)
        takeover = _since(killed_at, 30.0, lambda: _role(survivor) == "leader")
        first_write = _since(killed_at, 30.0, lambda: int(_healthz(survivor).get("seq") or 0) > seq_before)
        old_role: str | None = None
        if pause:
            monitors[leader].signal(signal.SIGCONT)
            try:
                wait_until(lambda: _role(ports[leader]) == "standby", 30.0, interval=0.2)
            except TimeoutError:
                pass
            old_role = _role(ports[leader])
        wait_until(lambda: _succeeded(app, ids) == jobs, timeout, interval=0.2, what="every job to succeed")
        mismatches: list[str] = []
        try:
            wait_until(lambda: not state_mismatches(app, survivor, ids), 60.0, interval=1.0)
        except TimeoutError:
            mismatches = state_mismatches(app, survivor, ids)
        live = {"standby_deltas_before": len(dashboards[1 - leader].deltas) - dashboards[1 - leader].after(killed_at),
                "standby_deltas_after": dashboards[1 - leader].after(killed_at),
                "moved_deltas_after": dashboards[leader].after(killed_at)}
        return Result(jobs=jobs, finished=_succeeded(app, ids), duplicates=observer.counts()["duplicates"],
                      takeover=takeover, first_write=first_write, mismatches=mismatches, live=live,
                      seconds=time.monotonic() - started, old_role=old_role)
    finally:
        for dashboard in dashboards:
            dashboard.stop()
        observer.stop()
        fleet.stop()
        for monitor in monitors:
            monitor.stop()
        app.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lease", type=float, default=3.0, help="JOBQUEUE_MONITOR_LEASE_SECONDS")
    parser.add_argument("--pause", action="store_true", help="SIGSTOP the leader (SIGCONT after the take-over)")
    parser.add_argument("--pg-admin", default=PG_ADMIN_URL, help="a PostgreSQL database to create the drill's from")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="chaos-standby-"))
    server = RedisServer().start()
    try:
        with fresh_database(args.pg_admin) as pg:
            result = run(server.url(0), pg, workdir, jobs=args.jobs, workers=args.workers, lease=args.lease,
                         pause=args.pause)
    finally:
        server.stop()
    print(result.line())
    for line in result.mismatches[:20]:
        print("  " + line)
    print(f"(logs in {workdir})")
    ok = not result.mismatches and result.finished == result.jobs and (result.first_write or 99) <= 10 \
        and result.old_role in (None, "standby")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
