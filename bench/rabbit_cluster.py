"""A RabbitMQ cluster on this machine: ``nodes`` real ``rabbitmq-server`` nodes (``rabbitA@localhost``,
``rabbitB@localhost``...) with their own AMQP and distribution ports (free ones), data and log
directories, no plugins, and one Erlang cookie, joined into one cluster (the RabbitMQ drill and
the quorum-queue tests use it). The machine's own RabbitMQ (5672) is never touched.

How a node is started (RabbitMQ 3.10): ``RABBITMQ_NODENAME``, ``RABBITMQ_NODE_PORT``,
``RABBITMQ_DIST_PORT``, ``RABBITMQ_MNESIA_BASE``, ``RABBITMQ_LOG_BASE``,
``RABBITMQ_ENABLED_PLUGINS_FILE`` (a file holding ``[].``) and the cookie through
``-setcookie`` in ``RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS`` (``rabbitmqctl`` gets it in
``RABBITMQ_CTL_ERL_ARGS``; ``RABBITMQ_ERLANG_COOKIE`` is deprecated). The nodes register with
the machine's ``epmd``. Then ``rabbitmqctl -n rabbitB@localhost stop_app; join_cluster
rabbitA@localhost; start_app`` for every node after the first.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import Process, free_port, wait_until

#: Where the Debian package keeps the scripts (``/usr/sbin/rabbitmq-server`` switches user).
SCRIPTS = Path("/usr/lib/rabbitmq/bin")


def _script(name: str) -> str:
    own = SCRIPTS / name
    return str(own) if own.exists() else (shutil.which(name) or name)


def _tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class RabbitCluster:
    """``nodes`` clustered RabbitMQ nodes on free ports, in one temporary directory."""

    def __init__(self, nodes: int = 3, workdir: Path | None = None, consumer_timeout_ms: int = 3_900_000) -> None:
        #: Every node's ``consumer_timeout``: longer than any job (``JOBQUEUE_JOB_TIMEOUT`` + a
        #: margin), or RabbitMQ closes the channel of a worker still running one (docs/deployment.md).
        self.consumer_timeout_ms = consumer_timeout_ms
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="bench-rabbit-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        tag = secrets.token_hex(3)
        self.names = [f"rabbit{chr(ord('A') + i)}{tag}@localhost" for i in range(nodes)]
        self.ports = [free_port() for _ in range(nodes)]
        self.dist_ports = [free_port() for _ in range(nodes)]
        self.cookie = secrets.token_hex(16)
        self.processes: dict[str, Process] = {}
        self.killed: set[str] = set()
        (self.dir / "plugins").write_text("[].\n")

    # -- addresses ---------------------------------------------------------------------------
    def url(self, index: int = 0, vhost: str = "/") -> str:
        """One node's AMQP URL."""
        path = "/" if vhost == "/" else vhost
        return f"amqp://guest:guest@127.0.0.1:{self.ports[index]}/{path}"

    def urls(self, vhost: str = "/") -> str:
        """Every node, in kombu's failover form (``amqp://...;amqp://...``): a client moves to
        the next node when the one it uses goes away."""
        return ";".join(self.url(i, vhost) for i in range(len(self.names)))

    def _env(self, index: int) -> dict[str, str]:
        import os

        name = self.names[index]
        base = self.dir / name.split("@")[0]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "JOBQUEUE_"))}
        env.update({
            "RABBITMQ_NODENAME": name, "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.ports[index]), "RABBITMQ_DIST_PORT": str(self.dist_ports[index]),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"), "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "pid"), "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "plugins"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"), "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": f"-setcookie {self.cookie}",
            "RABBITMQ_CTL_ERL_ARGS": f"-setcookie {self.cookie}", "HOME": str(base)})
        return env

    def ctl(self, index: int, *args: str, timeout: float = 60.0) -> str:
        """``rabbitmqctl -n <node> args...`` on node ``index``; raises on failure."""
        cmd = [_script("rabbitmqctl"), "-n", self.names[index], *args]
        done = subprocess.run(cmd, env=self._env(index), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[1:])}: {done.stdout[-500:]} {done.stderr[-1500:]}")
        return done.stdout

    # -- life --------------------------------------------------------------------------------
    def _start_node(self, index: int) -> None:
        name = self.names[index]
        base = self.dir / name.split("@")[0]
        base.mkdir(parents=True, exist_ok=True)
        (base / "rabbitmq.conf").write_text(f"loopback_users = none\nconsumer_timeout = {self.consumer_timeout_ms}\n")
        (base / "advanced.config").write_text("[].\n")
        (base / "rabbitmq-env.conf").write_text("")
        self.processes[name] = Process([_script("rabbitmq-server")], self._env(index), self.dir / f"{name.split('@')[0]}.log").start()

    def start(self, timeout: float = 120.0) -> RabbitCluster:
        for index in range(len(self.names)):
            self._start_node(index)
        for index in range(len(self.names)):
            self._wait_node(index, timeout)
        for index in range(1, len(self.names)):
            self.ctl(index, "stop_app")
            self.ctl(index, "join_cluster", self.names[0])
            self.ctl(index, "start_app")
            self._wait_node(index, timeout)
        wait_until(lambda: self.running_nodes() == set(self.names), timeout, interval=0.5,
                   what="every node to be running in one cluster")
        return self

    def _wait_node(self, index: int, timeout: float) -> None:
        process = self.processes[self.names[index]]

        def up() -> bool:
            if not process.alive():
                raise RuntimeError(f"{self.names[index]} exited; log tail: {process.log_text()[-3000:]}")
            return _tcp_open(self.ports[index])

        wait_until(up, timeout, interval=0.2, what=f"{self.names[index]} to listen on {self.ports[index]}")
        self.ctl(index, "await_startup", "--timeout", str(int(timeout)), timeout=timeout + 10)

    def running_nodes(self, via: int | None = None) -> set[str]:
        """The cluster's running nodes as one live node sees them."""
        for index in ([via] if via is not None else range(len(self.names))):
            if self.names[index] in self.killed:
                continue
            try:
                out = self.ctl(index, "eval", "rabbit_nodes:all_running().", timeout=20)
            except (RuntimeError, subprocess.TimeoutExpired):
                continue
            return {n for n in self.names if n in out}
        return set()

    def add_vhost(self, vhost: str) -> None:
        self.ctl(0, "add_vhost", vhost)
        self.ctl(0, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")

    def kill(self, index: int) -> float:
        """SIGKILL node ``index`` (a crash, no goodbye to its peers); ``time.monotonic()`` of it."""
        name = self.names[index]
        self.processes[name].signal(signal.SIGKILL)
        self.killed.add(name)
        return time.monotonic()

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop(timeout=20)
            if process.alive():
                process.signal(signal.SIGKILL)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
