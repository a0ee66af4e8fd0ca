"""Latency: a worker's progress event → the monitor's websocket client, with 50 jobs running.

``--workers`` workers × ``--concurrency`` threads run ``--jobs`` simulation jobs at once (50 by
default), each reporting ``--steps`` steps. The bench listens to the event stream itself to
learn when each ``task-progress`` (job, step) was sent (the event's ``timestamp`` field, set
by the worker's dispatcher), and keeps a websocket client on the monitor's ``/ws`` that notes
when a job delta first shows that step. Latency = websocket receive time − event timestamp
(same machine, same clock). Steps the monitor's writer coalesced (a later step arrived in the
same batch) never appear on their own; they are counted as "superseded", not as latency.

    python -m bench.latency --jobs 50 --workers 5 --concurrency 10
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import websocket

from bench.chaos.drill import Fleet, backend_states
from bench.common import (
    RedisServer,
    bench_settings,
    fmt_table,
    free_port,
    monitor_process,
    percentile,
    wait_http,
    wait_until,
    wait_worker_ready,
    worker_process,
)
from jobqueue.client.jobs import submit_job
from jobqueue.shared.names import TASK_PROGRESS
from jobqueue.transport.app import create_app
from jobqueue.up.procs import EventListener


class ProgressSent:
    """Event-stream listener: when each (job, step) progress event was sent."""

    def __init__(self, app: Any) -> None:
        self.sent: dict[tuple[str, int], float] = {}
        self._listener = EventListener(app, self._on_event, name="progress-sent")

    def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("type") == TASK_PROGRESS and isinstance(event.get("step"), int):
            self.sent.setdefault((event["uuid"], event["step"]), float(event["timestamp"]))

    def start(self) -> ProgressSent:
        self._listener.start(10)
        return self

    def stop(self) -> None:
        self._listener.stop(5)


class WsClient:
    """A websocket client on the monitor's ``/ws``: when each (job, step) first arrived.

    Like the dashboard, it tracks the last ``seq`` and reconnects with ``?since=<seq>`` when the
    connection drops (counted in :attr:`reconnects`)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: dict[tuple[str, int], float] = {}
        self.messages = 0
        self.reconnects = 0
        self.snapshots = 0
        self.last_seq: int | None = None
        self._ws: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> WsClient:
        self._ws = websocket.create_connection(self.url, timeout=None)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                raw = self._ws.recv()
            except Exception:
                raw = ""
            if not raw:
                if self._stop.is_set():
                    return
                self.reconnects += 1
                since = "" if self.last_seq is None else f"?since={self.last_seq}"
                try:
                    self._ws = websocket.create_connection(self.url + since, timeout=None)
                except Exception:
                    self._stop.wait(0.2)
                continue
            now = time.time()
            self.messages += 1
            try:
                message = json.loads(raw)
            except (TypeError, ValueError):
                continue
            if not isinstance(message, dict):
                continue
            if isinstance(message.get("seq"), int):
                self.last_seq = message["seq"]
            if message.get("type") == "snapshot":
                self.snapshots += 1
                for data in (message.get("state") or {}).get("jobs", []):
                    self._note(data, now)
                continue
            if message.get("type") == "delta" and message.get("kind") == "job" and message.get("data"):
                self._note(message["data"], now)

    def _note(self, data: dict[str, Any], now: float) -> None:
        step = (data.get("progress") or {}).get("step")
        if isinstance(step, int):
            self.seen.setdefault((data["id"], step), now)

    def stop(self) -> None:
        self._stop.set()
        try:
            self._ws.close()
        except Exception:
            pass
        self._thread.join(5)


def run(url: str, workdir: Path, *, jobs: int = 50, workers: int = 5, concurrency: int = 10, steps: int = 20,
        step_seconds: float = 0.25) -> dict[str, Any]:
    settings = bench_settings(url, workdir)
    app = create_app(settings)
    fleet = Fleet(app, settings, workdir, size=workers)
    port = free_port()
    monitor = monitor_process(settings, port, workdir / "monitor.log").start()
    sent = ProgressSent(app)
    ws: WsClient | None = None
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", monitor)
        for gpu in range(workers):
            fleet.workers[gpu] = worker_process(settings, f"gpu{gpu}", workdir / f"worker-gpu{gpu}.log",
                                                extra_args=("--concurrency", str(concurrency))).start()
        for gpu in range(workers):
            wait_worker_ready(app, fleet.node_name(gpu), fleet.workers[gpu])
        sent.start()
        ws = WsClient(f"ws://127.0.0.1:{port}/ws").start()
        ids = [submit_job("simulation", {"steps": steps, "step_seconds": step_seconds}, app=app).id
               for _ in range(jobs)]
        wait_until(lambda: all(s == "SUCCESS" for s in backend_states(app, ids).values()),
                   120 + steps * step_seconds * 4, interval=0.2, what="every job")
        # The last deltas may still be on their way.
        try:
            wait_until(lambda: all((i, steps) in ws.seen for i in ids), 30, interval=0.1)
        except TimeoutError:
            pass
        last_missing = sum(1 for i in ids if (i, steps) not in ws.seen)
        latencies = [(ws.seen[key] - ts) * 1000.0 for key, ts in sent.sent.items() if key in ws.seen]
        superseded = sum(1 for key in sent.sent if key not in ws.seen)
        return {
            "jobs": jobs, "concurrent": workers * concurrency, "progress events": len(sent.sent),
            "seen on /ws": len(latencies), "superseded": superseded,
            "last step missing": last_missing, "ws reconnects": ws.reconnects,
            "snapshots": ws.snapshots, "p50 ms": percentile(latencies, 50), "p99 ms": percentile(latencies, 99),
            "max ms": max(latencies) if latencies else float("nan"),
        }
    finally:
        if ws is not None:
            ws.stop()
        sent.stop()
        fleet.stop()
        monitor.stop()
        app.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--workers", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--step-seconds", type=float, default=0.25)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    server = RedisServer().start()
    try:
        row = run(server.url(0), workdir, jobs=args.jobs, workers=args.workers, concurrency=args.concurrency,
                  steps=args.steps, step_seconds=args.step_seconds)
    finally:
        server.stop()
    print(fmt_table([row], list(row)))
    print("target: p50 <= 50 ms, p99 <= 200 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
