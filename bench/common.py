"""Shared pieces of the benchmarks and chaos drills: a private Redis server, worker and
monitor processes, pre-encoded event messages, percentiles.

Nothing here connects at import time; every process it starts is stopped by its owner
(``stop()``), and every helper takes what it needs as arguments.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import redis

from jobqueue.config import Settings
from jobqueue.up.procs import ChildProcess, worker_command
from jobqueue.up.procs import wait_until as wait_until  # the benchmarks import it from here

#: Repository root (bench/ lives directly under it).
ROOT = Path(__file__).resolve().parent.parent


# -- small utilities ---------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: Iterable[float], pct: float) -> float:
    """The ``pct`` percentile (nearest rank) of ``values``; nan when empty."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(pct / 100.0 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``JOBQUEUE_*`` variables that reproduce ``settings`` in a child process."""
    return settings.to_env()


def child_env(settings: Settings | None = None, **extra: str) -> dict[str, str]:
    """Environment for a child process: ours without JOBQUEUE_*, then ``settings``, then extras."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBQUEUE_")}
    if settings is not None:
        env.update(settings_env(settings))
    env.update(extra)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def bench_settings(broker_url: str, workdir: Path, **overrides: Any) -> Settings:
    """Settings for a bench run: a short lease and visibility timeout (like the tests)."""
    values: dict[str, Any] = {
        "broker_url": broker_url,
        "result_backend": broker_url,
        "machine_id": f"bench{uuid.uuid4().hex[:6]}",
        "visibility_timeout": 6.0,
        "lease_interval": 1.0,
        "health_interval": 1.0,
        "status_beat": 3.0,
        "heartbeat_interval": 1.0,
        "output_dir": str(workdir / "outputs"),
        "monitor_db": f"sqlite:///{workdir / 'monitor.db'}",
    }
    values.update(overrides)
    return Settings(**values).resolved()


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB (from /proc)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


# -- processes ---------------------------------------------------------------------------------
class Process(ChildProcess):
    """A :class:`jobqueue.up.procs.ChildProcess` run from the repository root."""

    def __init__(self, cmd: list[str], env: Mapping[str, str], log_path: Path | None = None) -> None:
        super().__init__(cmd, env, log_path, cwd=ROOT)


def worker_process(settings: Settings, queues: str, log_path: Path | None = None,
                   extra_args: Iterable[str] = (), **env: str) -> Process:
    """A (not yet started) ``celery -A jobqueue worker -Q <queues>`` process for ``settings``."""
    return Process(worker_command(queues, extra_args), child_env(settings, **env), log_path)


def wait_worker_ready(app: Any, node_name: str, process: Process, timeout: float = 60.0) -> None:
    """Wait until ``node_name`` answers a ping (then it consumes its queues)."""

    def answered() -> bool:
        if not process.alive():
            raise RuntimeError(f"worker {node_name} exited; log tail: {process.log_text()[-2000:]}")
        replies = app.control.ping(destination=[node_name], timeout=0.5) or []
        return any(node_name in reply for reply in replies)

    wait_until(answered, timeout, interval=0.1, what=f"worker {node_name} to answer ping")


def monitor_process(settings: Settings, port: int, log_path: Path | None = None, **env: str) -> Process:
    """A (not yet started) monitor process (``python -m monitor.server``, what ``jobqueue
    monitor`` runs) for ``settings`` on ``port``."""
    cmd = [sys.executable, "-m", "monitor.server", "--host", "127.0.0.1", "--port", str(port)]
    return Process(cmd, child_env(settings, **env), log_path)


def wait_http(url: str, process: Process, timeout: float = 60.0) -> None:
    """Wait until ``url`` answers 200 (and fail early when ``process`` died)."""
    import requests

    def answered() -> bool:
        if not process.alive():
            raise RuntimeError(f"{process.cmd[:4]} exited; log tail: {process.log_text()[-2000:]}")
        try:
            return requests.get(url, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_until(answered, timeout, interval=0.2, what=url)


class RedisServer:
    """A private ``redis-server`` on a free port in a temporary directory.

    ``appendonly=True`` makes it durable across :meth:`restart` (the chaos drill needs that:
    queued jobs must survive the broker going away).
    """

    def __init__(self, *, appendonly: bool = False, port: int | None = None, workdir: Path | None = None,
                 bind: tuple[str, ...] = ("127.0.0.1",)) -> None:
        self.appendonly = appendonly
        self.bind = bind
        self.port = port or free_port()
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="bench-redis-"))
        self.process: Process | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server") or "redis-server"
        cmd = [binary, "--port", str(self.port), "--bind", *self.bind, "--dir", str(self.dir),
               "--save", "", "--appendonly", "yes" if self.appendonly else "no",
               "--appendfsync", "everysec", "--protected-mode", "no"]
        self.process = Process(cmd, child_env(), self.dir / "redis.log").start()
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        try:
            wait_until(up, timeout, interval=0.05, what=f"redis-server on {self.port}")
        finally:
            client.close()
        return self

    def kill(self) -> None:
        """SIGKILL the server (what a crash looks like to clients)."""
        if self.process is not None:
            self.process.signal(signal.SIGKILL)

    def restart(self) -> None:
        """Kill and start again on the same port and directory (data from the AOF)."""
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=5)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


# -- pre-encoded events ------------------------------------------------------------------------
def event_channel(db: int, event_type: str) -> str:
    """The Redis pub/sub channel kombu's fanout publishes ``event_type`` on."""
    group, _, rest = event_type.partition("-")
    routing_key = f"{group}.{rest}" if rest else group
    return f"/{db}.celeryev/{routing_key}"


def encode_event(event: Mapping[str, Any]) -> bytes:
    """One event as the kombu message a Celery ``Dispatcher`` would put on Redis pub/sub."""
    group, _, rest = str(event["type"]).partition("-")
    routing_key = f"{group}.{rest}" if rest else group
    body = base64.b64encode(json.dumps(event).encode("utf-8")).decode("ascii")
    envelope = {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"hostname": event.get("hostname")},
        "properties": {
            "delivery_mode": 1,
            "delivery_info": {"exchange": "celeryev", "routing_key": routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope).encode("utf-8")


def fmt_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A Markdown table of ``rows`` (the benchmarks print these for docs/benchmarks.md)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def group_cpu_seconds(pgids: Iterable[int]) -> float:
    """User + system CPU seconds so far of every live process in the process groups ``pgids``
    (a :class:`Process` leads a group of its own: a monitor's gunicorn workers count with it).
    Linux ``/proc``; 0.0 elsewhere. CPU time, not wall time: a busy machine slows every side
    but charges each only what it ran."""
    groups, total, tick = set(pgids), 0, os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) in groups:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def command_calls(url: str) -> dict[str, int]:
    """Redis's own count of calls per command (``INFO commandstats``) so far."""
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def server_reads(url: str) -> int:
    """Read events Redis processed on client sockets so far (``INFO stats``
    ``total_reads_processed``): about one per round trip a client makes (a pipeline's commands
    arrive in one), so the difference over a run counts round trips, whoever made them (the
    later call's own ``INFO`` included: subtract 1). One connection per URL, kept, so no
    handshake of its own falls inside the window."""
    client = _READERS.get(url)
    if client is None:
        client = _READERS[url] = redis.Redis.from_url(url)
    return int(client.info("stats")["total_reads_processed"])


_READERS: dict[str, redis.Redis] = {}
