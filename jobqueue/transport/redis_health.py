"""Dead-peer detection for long-lived Redis connections.

A Redis connection whose peer vanished without closing it (a NAT or firewall entry dropped, a
host powered off, a network partition) looks perfectly healthy to the client: a reader waiting
for data waits forever, a writer's bytes sit in the kernel's buffer. Every long-lived Redis
connection of jobqueue therefore notices a dead peer within a bound set by one setting,
``redis_health_interval`` (``JOBQUEUE_REDIS_HEALTH_INTERVAL``, seconds):

* **TCP keepalive** on every connection: the kernel probes an idle connection after
  ``interval`` seconds, every ``interval / 3`` seconds, and gives up after 3 unanswered probes
  (a host that is gone, or a path that drops everything);
* **an application PING**: redis-py's ``health_check_interval`` before a command on an idle
  connection, kombu's checks of its BRPOP and pub/sub connections (kombu >= 5.7), and the
  monitor's raw event reader, which PINGs after ``interval`` seconds of silence and drops the
  connection when nothing at all arrives ``interval`` seconds later -- the only check that
  sees a peer that still ACKs TCP but no longer answers (a proxy or middlebox that stopped
  forwarding);
* **a socket timeout** of ``socket_timeout(interval)`` on synchronous commands, so a command
  sent into a dead connection fails instead of hanging (and the connection is replaced).

Each reader reconnects on its own; the monitor's collector then asks for a truth repair,
which recovers whatever the stream lost meanwhile.
"""

from __future__ import annotations

import socket
from typing import Any

#: Unanswered TCP keepalive probes before the kernel drops a connection.
KEEPALIVE_PROBES = 3


def keepalive_options(interval: float) -> dict[int, int]:
    """``socket_keepalive_options`` for redis-py/kombu: first probe after ``interval`` s of
    idleness, then every ``interval / 3`` s, dead after :data:`KEEPALIVE_PROBES` misses (the
    options this platform knows; Linux has all three)."""
    options: dict[int, int] = {}
    for name, value in (("TCP_KEEPIDLE", interval), ("TCP_KEEPINTVL", interval / KEEPALIVE_PROBES),
                        ("TCP_KEEPCNT", KEEPALIVE_PROBES)):
        constant = getattr(socket, name, None)
        if constant is not None:
            options[constant] = max(1, round(value))
    return options


def socket_timeout(interval: float) -> float:
    """Seconds a synchronous Redis command may wait for its reply: twice the health interval,
    at least 5 s (kombu's BRPOP waits up to 1 s server-side; a busy Redis may pause)."""
    return max(5.0, 2.0 * interval)


def redis_kwargs(interval: float) -> dict[str, Any]:
    """Keyword arguments for a long-lived ``redis.Redis`` / ``ConnectionPool``."""
    return {
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive_options(interval),
        "health_check_interval": max(1, round(interval)),
        "socket_timeout": socket_timeout(interval),
    }


def transport_options(interval: float) -> dict[str, Any]:
    """kombu Redis transport options (broker connections of workers, clients, the monitor)."""
    return {
        "health_check_interval": max(1, round(interval)),
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive_options(interval),
        "socket_timeout": socket_timeout(interval),
    }


def backend_settings(interval: float) -> dict[str, Any]:
    """Celery settings for the Redis result backend's connections."""
    return {
        "redis_backend_health_check_interval": max(1, round(interval)),
        "redis_socket_keepalive": True,
        "redis_socket_timeout": socket_timeout(interval),
    }
