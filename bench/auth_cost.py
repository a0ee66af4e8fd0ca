"""The cost of auth per request: ``/api/jobs?limit=100`` p50 on a monitor with no auth
configured vs the same request on a monitor with a token, sent with an API key, the token
and a session cookie — same run, same store content, same private Redis.

Both monitors serve a copy of one store (1,000 finished and 200 open jobs built through the
monitor's write path, :func:`bench.api.build_template`). The requests alternate between the
two monitors round by round, so a noisy moment of the machine hits both alike.

    python -m bench.auth_cost --requests 300
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.api import build_template
from bench.common import (
    RedisServer,
    bench_settings,
    fmt_table,
    free_port,
    monitor_process,
    percentile,
    wait_http,
)
from monitor.store import Store
from monitor.store.access import create_key

PATH = "/api/jobs?limit=100"
TOKEN = "bench-auth-token"


def _timed(session: requests.Session, url: str, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    response = session.get(url, headers=headers, timeout=60)
    elapsed = (time.perf_counter() - started) * 1000.0
    response.raise_for_status()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="requests per variant")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-auth-"))
    server = RedisServer().start()
    monitors = []
    try:
        store = Store(f"sqlite:///{workdir / 'open.db'}")
        build_template(store, time.time())
        store.close()
        shutil.copy(workdir / "open.db", workdir / "auth.db")
        store = Store(f"sqlite:///{workdir / 'auth.db'}")
        key, _ = create_key(store, "viewer", name="bench")
        store.close()
        urls = {}
        for name, extra in (("open", {}), ("auth", {"monitor_token": TOKEN})):
            settings = bench_settings(server.url(0), workdir, monitor_db=f"sqlite:///{workdir / name}.db",
                                      monitor_keep_seconds=10 * 365 * 86400.0, **extra)
            port = free_port()
            monitor = monitor_process(settings, port, workdir / f"monitor-{name}.log").start()
            monitors.append(monitor)
            wait_http(f"http://127.0.0.1:{port}/healthz", monitor, timeout=120)
            urls[name] = f"http://127.0.0.1:{port}{PATH}"
        cookie = requests.post(urls["auth"].replace(PATH, "/login"), json={"credential": key},
                               timeout=10).cookies["jobqueue_session"]
        variants = {
            "no auth configured": (urls["open"], {}),
            "API key (Bearer jq_...)": (urls["auth"], {"Authorization": f"Bearer {key}"}),
            "token (Bearer)": (urls["auth"], {"Authorization": f"Bearer {TOKEN}"}),
            "session cookie (key login)": (urls["auth"], {"Cookie": f"jobqueue_session={cookie}"}),
        }
        sessions = {name: requests.Session() for name in variants}
        times: dict[str, list[float]] = {name: [] for name in variants}
        for name, (url, headers) in variants.items():  # warm: first connection, caches
            for _ in range(5):
                _timed(sessions[name], url, headers)
        for _ in range(args.requests):
            for name, (url, headers) in variants.items():
                times[name].append(_timed(sessions[name], url, headers))
        base = percentile(times["no auth configured"], 50)
        rows = [{"variant": name, "p50 ms": percentile(t, 50), "p99 ms": percentile(t, 99),
                 "p50 vs no auth ms": percentile(t, 50) - base} for name, t in times.items()]
        print(fmt_table(rows, list(rows[0])))
    finally:
        for monitor in monitors:
            monitor.stop()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
