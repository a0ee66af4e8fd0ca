"""The monitor under a production WSGI server: gunicorn, one worker process with threads.

Why these choices:

* **gunicorn's threaded worker** (``gthread``) answers HTTP requests, ``JOBQUEUE_MONITOR_THREADS``
  at a time. A websocket's opening handshake is one such request; once answered, the socket is
  taken from gunicorn and served by the fan-out's asyncio loop (:mod:`monitor.web.fanout`), so
  open dashboards hold no thread and the API stays responsive however many are open (bounded by
  ``JOBQUEUE_MONITOR_WS_MAX_SOCKETS`` and ``JOBQUEUE_MONITOR_WS_MAX_PER_ADDRESS``).
* **One worker process**: the monitor is one writer over one store, with the collector and
  truth repair beside it. They start in the worker (after the fork, in :meth:`load`) and stop
  when it exits; a SIGTERM first closes the websockets (1001) so the graceful stop is quick.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication

from jobqueue.config import Settings
from jobqueue.shared.lifeline import parent_death_hook
from monitor.web import ws

log = logging.getLogger(__name__)

#: Seconds gunicorn gives in-flight requests when it stops.
GRACEFUL_TIMEOUT = 10
#: Seconds a worker may stay silent before the arbiter restarts it (its main loop beats).
WORKER_TIMEOUT = 60


def bind_address(host: str, port: int) -> str:
    """gunicorn's ``bind`` for ``host``/``port`` (IPv6 literals in brackets)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class MonitorApplication(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type information
    """gunicorn application that builds and runs the whole monitor inside its worker
    (``build_monitor()``: a :class:`monitor.server.Monitor` without a web server of its own)."""

    def __init__(self, settings: Settings, host: str, port: int, build_monitor: Callable[[], Any]) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.build_monitor = build_monitor
        self.monitor: Any = None
        # Made here, in the master: the worker it runs in then dies with this process, even
        # when it is SIGKILLed (gunicorn's own check of its parent can take many seconds).
        self._die_with_master = parent_death_hook(signal.SIGKILL)
        super().__init__()

    def load_config(self) -> None:
        options = {
            "bind": bind_address(self.host, self.port),
            "workers": 1,
            "worker_class": "gthread",
            "threads": max(2, self.settings.monitor_threads),
            # Kept-alive connections need room beyond the threads.
            "worker_connections": 4 * max(2, self.settings.monitor_threads),
            "timeout": WORKER_TIMEOUT,
            "graceful_timeout": GRACEFUL_TIMEOUT,
            "keepalive": 5,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "info",
            "proc_name": "jobqueue-monitor",
            "limit_request_line": 8190,
            "limit_request_fields": 100,
            "post_fork": self._post_fork,
            "post_worker_init": self._post_worker_init,
            "worker_exit": self._worker_exit,
            # gunicorn >= 24 opens a control socket at one path per user: two monitors on one
            # host would fight over it, and nothing here uses it.
            "control_socket_disable": True,
        }
        assert self.cfg is not None
        for key, value in options.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self) -> Any:
        self.monitor = self.build_monitor()
        self.monitor.start()
        log.info("monitor on http://%s (gunicorn, %d threads)", bind_address(self.host, self.port),
                 self.settings.monitor_threads)
        return self.monitor.app

    def _post_fork(self, server: Any, worker: Any) -> None:
        if self._die_with_master is not None:
            self._die_with_master()

    def _post_worker_init(self, worker: Any) -> None:
        # gunicorn's SIGTERM handler only stops accepting; open websocket streams would then
        # hold the worker for the whole graceful timeout. End them first.
        previous = signal.getsignal(signal.SIGTERM)
        monitor = self.monitor

        def on_term(signum: int, frame: Any) -> None:
            if monitor is not None:
                monitor.app.extensions["jobqueue_monitor"].stopping.set()
                # Close the websockets (1001) without holding up the signal handler.
                threading.Thread(target=ws.stop, args=(monitor.app,), daemon=True).start()
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGTERM, on_term)

    def _worker_exit(self, server: Any, worker: Any) -> None:
        if self.monitor is not None:
            self.monitor.stop()


def serve_production(settings: Settings, host: str, port: int, build_monitor: Callable[[], Any]) -> None:
    """Run the monitor that ``build_monitor()`` makes (in gunicorn's worker, after the fork)
    under gunicorn until SIGINT or SIGTERM. The caller checks the bind address first
    (:func:`monitor.server.serve`)."""
    MonitorApplication(settings, host, port, build_monitor).run()
