"""A Redis Sentinel group on this machine: one master, one replica, three sentinels, each a real
``redis-server`` on a free port in one temporary directory (the failover drill and the
Sentinel tests use it).

Each sentinel gets a ``sentinel.conf`` of its own (Sentinel rewrites it as it learns the
group), monitors the master under :data:`MASTER_NAME` with a quorum of 2, and decides the
master is down after ``down_after_ms``.
"""

from __future__ import annotations

import gc
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench.common import Process, child_env, free_port, wait_until

#: The name the sentinels know the master by.
MASTER_NAME = "mymaster"


def _server(port: int, workdir: Path, name: str, *extra: str) -> Process:
    binary = shutil.which("redis-server") or "redis-server"
    data = workdir / name
    data.mkdir(parents=True, exist_ok=True)
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "",
           "--appendonly", "no", "--protected-mode", "no", *extra]
    return Process(cmd, child_env(), workdir / f"{name}.log").start()


def _answers(port: int) -> bool:
    client = redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class SentinelGroup:
    """One master, one replica and ``sentinels`` sentinels watching them, on free ports."""

    def __init__(self, *, sentinels: int = 3, down_after_ms: int = 1000, failover_timeout_ms: int = 3000,
                 workdir: Path | None = None) -> None:
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="bench-sentinel-"))
        self.master_port = free_port()
        self.replica_port = free_port()
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.processes: dict[str, Process] = {}

    # -- addresses ---------------------------------------------------------------------------
    def url(self, db: int = 0) -> str:
        """The group in Celery's form: ``sentinel://127.0.0.1:<port>/<db>;...``."""
        return ";".join(f"sentinel://127.0.0.1:{port}/{db}" for port in self.sentinel_ports)

    def sentinel(self, index: int = 0) -> redis.Redis:
        return redis.Redis(port=self.sentinel_ports[index], socket_timeout=1, socket_connect_timeout=1,
                           decode_responses=True)

    def master_port_now(self) -> int | None:
        """The master's port as the first sentinel that answers names it."""
        for index in range(len(self.sentinel_ports)):
            client = self.sentinel(index)
            try:
                _host, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
                return int(port)
            except (redis.RedisError, TypeError):
                continue
            finally:
                client.close()
        return None

    # -- life --------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> SentinelGroup:
        self.processes["master"] = _server(self.master_port, self.dir, "master")
        wait_until(lambda: _answers(self.master_port), timeout, interval=0.05, what="the master")
        self.processes["replica"] = _server(self.replica_port, self.dir, "replica",
                                            "--replicaof", "127.0.0.1", str(self.master_port))
        wait_until(self._replica_synced, timeout, interval=0.05, what="the replica to sync")
        for index, port in enumerate(self.sentinel_ports):
            conf = self.dir / f"sentinel-{index}.conf"
            conf.write_text("\n".join([
                f"port {port}", "bind 127.0.0.1", "protected-mode no", f"dir {self.dir}",
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 2",
                f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}",
                f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {MASTER_NAME} 1", ""]))
            binary = shutil.which("redis-server") or "redis-server"
            self.processes[f"sentinel-{index}"] = Process([binary, str(conf), "--sentinel"], child_env(),
                                                          self.dir / f"sentinel-{index}.log").start()
        wait_until(self._sentinels_agree, timeout, interval=0.1, what="the sentinels to know the group")
        return self

    def _replica_synced(self) -> bool:
        client = redis.Redis(port=self.replica_port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return client.info("replication").get("master_link_status") == "up"
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _sentinels_agree(self) -> bool:
        """Every sentinel sees the replica and the other sentinels."""
        others = len(self.sentinel_ports) - 1
        for index in range(len(self.sentinel_ports)):
            client = self.sentinel(index)
            try:
                master: dict[str, Any] = client.sentinel_master(MASTER_NAME)
            except redis.RedisError:
                return False
            finally:
                client.close()
            if int(master.get("num-slaves", 0)) < 1 or int(master.get("num-other-sentinels", 0)) < others:
                return False
        return True

    def kill_master(self) -> float:
        """SIGKILL the current master (a crash); returns ``time.monotonic()`` of the kill."""
        port = self.master_port_now()
        name = "master" if port == self.master_port else "replica"
        self.processes[name].signal(signal.SIGKILL)
        return time.monotonic()

    def wait_promoted(self, old_port: int, timeout: float = 30.0) -> float:
        """Seconds until the sentinels name a master other than ``old_port`` that answers as one."""
        began = time.monotonic()

        def promoted() -> bool:
            port = self.master_port_now()
            if port is None or port == old_port:
                return False
            client = redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
            try:
                return client.info("replication").get("role") == "master"
            except redis.RedisError:
                return False
            finally:
                client.close()

        wait_until(promoted, timeout, interval=0.05, what="a replica to be promoted")
        return time.monotonic() - began

    def stop(self) -> None:
        """Stop every server. Results of this group's apps that were dropped inside a reference
        cycle (an exception's traceback holds the frames that held them) are collected first:
        their ``__del__`` unsubscribes, which must happen while the group still answers, not in
        whatever runs next, where each one waits out redis-py's reconnect backoff against
        sentinels that are gone (a test after the drill stalled for seconds in the collector)."""
        gc.collect()
        for process in self.processes.values():
            process.stop(timeout=5)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
