"""Dashboards: 500 open ``/ws`` clients on one monitor (gunicorn, as users run it), beside a
fleet of 200 workers made of replayed events (heartbeats every ``--beat`` seconds, connector
reports every ``--status-beat``, see :mod:`bench.fleet_events`). The 500 clients are cheap
hand-written websocket readers in this process, on the same two cores as the monitor.

Reports, in one run: ``/api/state`` p50/p99 with 200 workers and no dashboard, then with the
500 dashboards open; how long the 500 took to get their snapshots; a new dashboard's snapshot
time while they are open; for ``--jobs`` jobs completing (replayed ``task-succeeded`` events),
the share of dashboards that got the completion within 2 s and the latency percentiles; the
monitor's RSS and threads before and with the dashboards open. ``--chromium`` also times the
fleet page's table at 200 workers in headless Chromium.

    python -m bench.dashboards [--dashboards 500] [--workers 200] [--jobs 5] [--beat 2] [--status-beat 15] [--chromium]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import redis
import requests
import websocket

from bench import fleet_events
from bench.common import (
    RedisServer,
    bench_settings,
    fmt_table,
    free_port,
    monitor_process,
    percentile,
    wait_http,
    wait_until,
)
from jobqueue.shared.names import RUN_JOB_TASK

#: A client's pong: FIN + opcode 0xA, masked (as every client frame must be), empty.
PONG = b"\x8a\x80\x00\x00\x00\x00"


class Dashboard(asyncio.Protocol):
    """One dashboard as cheap as it gets (the 500 share the monitor's two cores): a hand-written
    handshake and frame reader, a substring test per frame instead of a JSON parse."""

    def __init__(self, index: int, clients: Clients, path: str, host: str) -> None:
        self.index, self.clients = index, clients
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
        self.buf = bytearray()
        self.upgraded = False
        self.snapshot: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.snapshot.done():
            self.snapshot.set_exception(RuntimeError(f"closed before the snapshot: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if b" 101 " not in self.buf[:end]:
                self.snapshot.set_exception(RuntimeError(bytes(self.buf[:200]).decode(errors="replace")))
                return
            del self.buf[:end + 4]
            self.upgraded = True
        while (frame := self._frame()) is not None:
            self._on_frame(*frame)

    def _frame(self) -> tuple[int, bytes] | None:
        buf = self.buf
        if len(buf) < 2:
            return None
        size, pos = buf[1] & 0x7F, 2
        if size >= 126:
            pos = 4 if size == 126 else 10
            if len(buf) < pos:
                return None
            size = int.from_bytes(buf[2:pos], "big")
        if len(buf) < pos + size:
            return None
        opcode = buf[0] & 0x0F
        payload = bytes(buf[pos:pos + size])
        del buf[:pos + size]
        return opcode, payload

    def _on_frame(self, opcode: int, payload: bytes) -> None:
        if opcode == 0x9 and self.transport is not None:
            self.transport.write(PONG)
        elif opcode == 0x1 and not self.snapshot.done():
            self.snapshot.set_result(time.perf_counter())
        elif opcode == 0x1 and b'"status":"completed"' in payload:
            now = time.time()
            for job_id, arrivals in self.clients.seen.items():
                if job_id.encode() in payload and self.index not in arrivals:
                    arrivals[self.index] = now


class Clients:
    """Dashboards (:class:`Dashboard`) in an asyncio loop of their own thread; each notes when it
    first saw a watched job completed."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.snapshot_ms: list[float] = []
        #: job id -> {client index: when it first saw the job completed}
        self.seen: dict[str, dict[int, float]] = {}
        self.dashboards: list[Dashboard] = []

    def open(self, count: int, parallel: int = 50) -> None:
        asyncio.run_coroutine_threadsafe(self._open(count, parallel), self.loop).result(600)

    async def _open(self, count: int, parallel: int) -> None:
        gate = asyncio.Semaphore(parallel)
        await asyncio.gather(*(self._one(i, gate) for i in range(count)))

    async def _one(self, index: int, gate: asyncio.Semaphore) -> None:
        async with gate:
            started = time.perf_counter()
            loop = asyncio.get_running_loop()
            _, dashboard = await loop.create_connection(
                lambda: Dashboard(index, self, "/ws", f"{self.host}:{self.port}"), self.host, self.port)
            self.dashboards.append(dashboard)
            self.snapshot_ms.append((await dashboard.snapshot - started) * 1000.0)

    def watch(self, job_id: str) -> None:
        """Note arrivals of ``job_id`` from now on (set in the loop: its readers iterate ``seen``)."""
        async def add() -> None:
            self.seen.setdefault(job_id, {})

        asyncio.run_coroutine_threadsafe(add(), self.loop).result(10)

    def close(self) -> None:
        def shut() -> None:
            for dashboard in self.dashboards:
                if dashboard.transport is not None:
                    dashboard.transport.close()
            self.loop.stop()

        self.loop.call_soon_threadsafe(shut)
        self.thread.join(10)


def time_state(url: str, count: int) -> tuple[float, float]:
    """p50 and p99 (ms) of ``count`` sequential ``GET /api/state``."""
    session = requests.Session()
    session.get(url + "/api/state", timeout=30).raise_for_status()
    times = []
    for _ in range(count):
        started = time.perf_counter()
        session.get(url + "/api/state", timeout=30).raise_for_status()
        times.append((time.perf_counter() - started) * 1000.0)
    return percentile(times, 50), percentile(times, 99)


def new_dashboard_ms(ws_url: str, tries: int = 10) -> list[float]:
    """How long a new dashboard waits for its snapshot, ``tries`` times."""
    out = []
    for _ in range(tries):
        started = time.perf_counter()
        ws = websocket.create_connection(ws_url, timeout=30)
        assert json.loads(ws.recv())["type"] == "snapshot"
        out.append((time.perf_counter() - started) * 1000.0)
        ws.close()
    return out


def complete_job(client: redis.Redis, db: int, worker: str, job_id: str) -> tuple[str, float]:
    """Replay job ``job_id`` from sent to succeeded on ``worker``; return its id and when the
    ``task-succeeded`` event was published."""
    now = time.time()
    meta = json.dumps({"service": "simulation", "priority": 5, "queue": "simulation", "submitted_at": now})
    fleet_events.publish(client, db, [
        {"type": "task-sent", "uuid": job_id, "name": RUN_JOB_TASK, "args": "()", "kwargs": meta, "retries": 0,
         "queue": "simulation", "hostname": "client@bench", "timestamp": now},
        {"type": "task-started", "uuid": job_id, "hostname": worker, "timestamp": now + 0.01},
    ])
    time.sleep(0.5)  # the job is processing on the dashboards before it ends
    result = {"job_id": job_id, "service": "simulation", "worker": worker, "attempt": 0, "output": "ok"}
    published = time.time()
    fleet_events.publish(client, db, [{"type": "task-succeeded", "uuid": job_id, "result": repr(result),
                                       "runtime": 0.5, "hostname": worker, "timestamp": published}])
    return job_id, published


def serving(monitor: Any) -> psutil.Process:
    """The gunicorn worker (the monitor process's child that serves)."""
    children = psutil.Process(monitor.proc.pid).children(recursive=True)
    return max(children, key=lambda p: p.memory_info().rss) if children else psutil.Process(monitor.proc.pid)


class Beats:
    """Replayed heartbeats of the fleet every ``freq`` seconds, connector reports every
    ``status_beat`` seconds (what real workers send: ``JOBQUEUE_STATUS_BEAT``, 15 s)."""

    def __init__(self, client: redis.Redis, db: int, workers: int, freq: float, status_beat: float) -> None:
        self.client, self.db, self.workers, self.freq = client, db, workers, freq
        self.status_beat = status_beat
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        round_ = 1
        last_report = time.monotonic()
        while not self.stop.wait(self.freq):
            reports = time.monotonic() - last_report >= self.status_beat
            fleet_events.beat(self.client, self.db, self.workers, self.freq, round_, reports=reports)
            if reports:
                last_report = time.monotonic()
            round_ += 1


def run(args: argparse.Namespace, workdir: Path, server: RedisServer) -> list[dict[str, Any]]:
    """The measurements of one run (see the module doc), as table rows."""
    settings = bench_settings(server.url(0), workdir, heartbeat_interval=args.beat)
    client = redis.Redis.from_url(server.url(0))
    port = free_port()
    monitor = monitor_process(settings, port, workdir / "monitor.log",
                              JOBQUEUE_MONITOR_WS_MAX_PER_ADDRESS=str(args.dashboards + 100)).start()
    url, rows = f"http://127.0.0.1:{port}", []
    beats = Beats(client, 0, args.workers, args.beat, args.status_beat)
    clients: Clients | None = None
    try:
        wait_http(url + "/healthz", monitor)
        fleet_events.announce(client, 0, args.workers, args.beat)
        wait_until(lambda: len(requests.get(url + "/api/state", timeout=30).json()["workers"]) >= args.workers,
                   60, interval=0.2, what=f"{args.workers} workers in the monitor")
        beats.thread.start()
        proc = serving(monitor)
        p50, p99 = time_state(url, args.requests)
        rows.append({"measure": f"/api/state, {args.workers} workers, no dashboard", "p50": p50, "p99": p99,
                     "unit": "ms"})
        rows.append({"measure": "monitor RSS / threads, no dashboard", "p50": proc.memory_info().rss / 2**20,
                     "p99": float(proc.num_threads()), "unit": "MB / threads"})
        if args.chromium:
            rows.append(fleet_table_row(url, args.workers))
        clients = Clients("127.0.0.1", port)
        started = time.perf_counter()
        clients.open(args.dashboards)
        rows.append({"measure": f"{args.dashboards} dashboards connected (all snapshots in {time.perf_counter() - started:.1f} s)",
                     "p50": percentile(clients.snapshot_ms, 50), "p99": percentile(clients.snapshot_ms, 99), "unit": "ms"})
        p50, p99 = time_state(url, args.requests)
        rows.append({"measure": f"/api/state with {args.dashboards} dashboards open", "p50": p50, "p99": p99, "unit": "ms"})
        fresh = new_dashboard_ms(url.replace("http", "ws") + "/ws")
        rows.append({"measure": "a new dashboard's snapshot meanwhile", "p50": percentile(fresh, 50),
                     "p99": max(fresh), "unit": "ms (p99 = worst of 10)"})
        rows += completions(clients, client, url, args)
        rows.append({"measure": f"monitor RSS / threads, {args.dashboards} dashboards open",
                     "p50": proc.memory_info().rss / 2**20, "p99": float(proc.num_threads()), "unit": "MB / threads"})
    finally:
        beats.stop.set()
        if clients is not None:
            clients.close()
        monitor.stop()
        client.close()
    return rows


def completions(clients: Clients, client: redis.Redis, url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """``args.jobs`` replayed completions: the share of dashboards within 2 s, the latencies to
    them, and (to tell the monitor's ingestion from the fan-out) to the monitor's own API."""
    latencies: list[float] = []
    applied: list[float] = []
    within: list[float] = []
    session = requests.Session()
    for n in range(args.jobs):
        job_id = str(uuid.uuid4())
        clients.watch(job_id)
        job_id, published = complete_job(client, 0, fleet_events.worker_name(n), job_id)
        deadline = time.time() + 10
        while time.time() < deadline and session.get(f"{url}/api/jobs/{job_id}", timeout=30).json().get("status") != "completed":
            time.sleep(0.01)
        applied.append(time.time() - published)
        while time.time() < deadline and len(clients.seen[job_id]) < args.dashboards:
            time.sleep(0.05)
        arrivals = [t - published for t in list(clients.seen[job_id].values())]
        latencies += arrivals
        within.append(100.0 * sum(a <= 2.0 for a in arrivals) / args.dashboards)
    return [
        {"measure": f"completion reached dashboards within 2 s ({args.jobs} jobs: worst, best)",
         "p50": min(within), "p99": max(within), "unit": "%"},
        {"measure": "completion event -> monitor API shows it (p99 = worst)", "p50": percentile(applied, 50) * 1000.0,
         "p99": max(applied) * 1000.0, "unit": "ms"},
        {"measure": "completion event -> dashboard", "p50": percentile(latencies, 50) * 1000.0,
         "p99": percentile(latencies, 99) * 1000.0, "unit": "ms"},
    ]


def fleet_table_row(url: str, workers: int, loads: int = 5) -> dict[str, Any]:
    """Median and worst ms from navigation to the fleet page's table showing every worker."""
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                     args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            for _ in range(loads + 1):  # the first load warms the caches
                started = time.perf_counter()
                page.goto(url + "/?view=table")
                page.wait_for_function("(n) => document.querySelectorAll('#fleet-table tbody tr[data-worker]').length >= n",
                                       arg=workers, timeout=60_000)
                times.append((time.perf_counter() - started) * 1000.0)
        finally:
            browser.close()
    times = times[1:]
    return {"measure": f"fleet table drawn in Chromium, {workers} workers", "p50": percentile(times, 50),
            "p99": max(times), "unit": "ms (p99 = worst of 5)"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dashboards", type=int, default=500)
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--beat", type=float, default=2.0, help="seconds between a worker's heartbeats")
    parser.add_argument("--status-beat", type=float, default=15.0, help="seconds between a worker's connector reports")
    parser.add_argument("--requests", type=int, default=200, help="/api/state requests per measurement")
    parser.add_argument("--chromium", action="store_true", help="also time the fleet table in Chromium")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-dashboards-"))
    server = RedisServer().start()
    try:
        rows = run(args, workdir, server)
    finally:
        server.stop()
    print(fmt_table(rows, ["measure", "p50", "p99", "unit"]))
    print("targets: /api/state p50 <= 50 ms with 500 dashboards and at 200 workers; a new snapshot within 1 s;"
          " a completion on >= 99% of dashboards within 2 s; the fleet table drawn in under 1 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
