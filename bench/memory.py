"""Monitor memory: RSS of the monitor process while it processes 1M events (target: flat,
<= 200 MB).

The monitor (``python -m monitor.server``, default settings: it keeps the newest 10,000
finished jobs) runs on a private Redis. The realistic event mix of :mod:`bench.ingest`
(lifecycle, progress, heartbeats, connector status of 50 workers) is published in chunks of
``--chunk`` events at ``--rate``/s; after each chunk the bench waits until the monitor's writer
has taken every event (``/healthz``) and samples the process's RSS (VmRSS from /proc).

    python -m bench.memory --events 1000000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import requests

from bench.common import (
    RedisServer,
    bench_settings,
    fmt_table,
    free_port,
    monitor_process,
    rss_mb,
    wait_http,
    wait_until,
)
from bench.events_mix import build_stream
from bench.ingest import publish


def _processed(port: int) -> tuple[int, int]:
    body = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=30).json()
    collector = body.get("collector") or {}
    return int((collector.get("writer") or {}).get("received", 0)), int(collector.get("backlog", 0))


def run(url: str, workdir: Path, *, events: int, chunk: int, rate: float) -> list[dict[str, Any]]:
    settings = bench_settings(url, workdir)
    port = free_port()
    monitor = monitor_process(settings, port, workdir / "monitor.log").start()
    client = redis.Redis.from_url(url)
    rows: list[dict[str, Any]] = []
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", monitor)
        start_rss = rss_mb(monitor.pid)
        rows.append({"events published": 0, "events processed": 0, "RSS MB": start_rss, "seconds": 0.0})
        print(fmt_table(rows[-1:], list(rows[-1])), flush=True)
        base, _ = _processed(port)
        started = time.monotonic()
        published = 0
        while published < events:
            n = min(chunk, events - published)
            stream = build_stream(n, rate, time.time(), db=0)
            publish(client, stream.messages, rate)
            published += n
            target = published

            def caught_up(target: int = target) -> bool:
                done, backlog = _processed(port)
                return done - base >= target and backlog == 0

            try:
                wait_until(caught_up, 600, interval=0.5, what="the monitor to take every event")
            except TimeoutError:
                print("monitor fell behind for 10 min; sampling anyway", flush=True)
            done, _ = _processed(port)
            rows.append({"events published": published, "events processed": done - base,
                         "RSS MB": rss_mb(monitor.pid), "seconds": time.monotonic() - started})
            print(fmt_table(rows[-1:], list(rows[-1])), flush=True)
        return rows
    finally:
        client.close()
        monitor.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=3000.0, help="offered events/s while a chunk is published")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    server = RedisServer().start()
    try:
        rows = run(server.url(0), workdir, events=args.events, chunk=args.chunk, rate=args.rate)
    finally:
        server.stop()
    print()
    print(fmt_table(rows, list(rows[0])))
    peak = max(r["RSS MB"] for r in rows[1:]) if len(rows) > 1 else rows[0]["RSS MB"]
    print(f"peak RSS {peak:.0f} MB after {rows[-1]['events processed']:,} events; target flat, <= 200 MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
