"""Run the monitor: writer, collector, truth repair and the web app in one process.

``serve(settings, host, port)`` blocks until SIGINT/SIGTERM, then stops everything in order
(websockets, repair, collector, writer, web server, store). It serves under gunicorn (threads
for HTTP, the websockets handed to one asyncio loop; see :mod:`monitor.production` and
:mod:`monitor.web.fanout`); Werkzeug's development server only with ``debug``. With no credentials configured it refuses to
bind to anything but localhost: controls without auth must not face a network.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from werkzeug.serving import make_server

from jobqueue.config import Settings
from jobqueue.errors import ConfigError
from monitor.app import create_app
from monitor.ingest.collector import EventCollector, wait_connected
from monitor.ingest.hub import ChangeHub
from monitor.ingest.standby import Leadership, holder_name, standby_enabled
from monitor.ingest.writer import Writer
from monitor.metrics.totals import Totals
from monitor.repair.reconcile import Repair
from monitor.store import Store
from monitor.store.lease import WriterLease
from monitor.web import offline, ws
from monitor.web.auth import has_credentials, is_loopback
from monitor.web.broker import monitor_celery_app
from monitor.web.prefix import normalise_prefix

log = logging.getLogger(__name__)


def check_bind(settings: Settings, host: str) -> None:
    """Refuse (ConfigError) to serve controls without credentials beyond localhost."""
    if not has_credentials(settings) and not settings.monitor_read_only and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve on {host}: no JOBQUEUE_MONITOR_TOKEN, JOBQUEUE_MONITOR_BASIC_AUTH or "
            "JOBQUEUE_MONITOR_SSO_PROVIDER is set (bind to 127.0.0.1, set credentials, or set JOBQUEUE_MONITOR_READ_ONLY=1)"
        )


class Monitor:
    """The monitor's parts, started and stopped together. ``web=False`` builds no web server
    (the production server, :mod:`monitor.production`, serves ``app`` itself)."""

    def __init__(self, settings: Settings, host: str, port: int, web: bool = True) -> None:
        check_bind(settings, host)
        self.settings = settings
        self.store = Store.from_settings(settings)
        self.hub = ChangeHub()
        self.celery = monitor_celery_app(settings)
        self.leadership = self._leadership(settings)
        self.writer = Writer(self.store, self.hub, heartbeat_default=settings.heartbeat_interval,
                             beat_default=settings.status_beat, totals=Totals(self.store),
                             secret_keys=settings.secret_keys_pattern, leadership=self.leadership,
                             standby_buffer=settings.monitor_standby_buffer, on_promoted=self._promoted,
                             min_interval=settings.monitor_write_interval)
        self.repair = Repair(self.celery, self.writer, self.store, settings)
        # Events of a gap in the stream are gone: repair recovers what the backend still knows.
        self.collector = EventCollector(self.celery, self.writer, on_reconnected=self.repair.trigger,
                                        event_window=settings.monitor_event_window)
        self.app = create_app(settings, store=self.store, hub=self.hub, writer=self.writer,
                              collector=self.collector, repair=self.repair, celery_app=self.celery)
        self.server: Any = make_server(host, port, self.app, threaded=True) if web else None
        self.port: int = self.server.server_port if self.server is not None else port
        self._stopped = threading.Event()

    def _leadership(self, settings: Settings) -> Leadership | None:
        """The writer's lease of a shared PostgreSQL store (:mod:`monitor.ingest.standby`);
        None: this monitor always writes."""
        if not standby_enabled(settings, self.store.is_sqlite):
            return None
        lease = WriterLease(self.store.engine, holder_name(), settings.monitor_lease_seconds)
        self.store.fence = lease.fence
        return Leadership(lease)

    def _promoted(self) -> None:
        self.repair.trigger()

    def start(self) -> Monitor:
        if self.leadership is not None:
            self.leadership.start()
        self.writer.start()
        self.collector.start()
        # Listen before asking: what happens while repair runs then arrives as events.
        wait_connected(self.collector, 5.0)
        self.repair.start()
        return self

    def serve_forever(self) -> None:
        log.info("monitor on http://%s:%d%s/", self.server.host, self.port,
                 normalise_prefix(self.settings.monitor_url_prefix))
        self.server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.app.extensions["jobqueue_monitor"].stopping.set()
        ws.stop(self.app)  # open websockets are closed with 1001
        self.repair.stop()
        self.collector.stop()
        self.writer.stop()
        if self.leadership is not None:
            self.leadership.stop()
        if self.server is not None:
            self.server.server_close()
        self.celery.close()
        self.store.close()


def serve(settings: Settings, host: str | None = None, port: int | None = None, debug: bool = False) -> None:
    """Run the monitor until SIGINT or SIGTERM: under gunicorn (:mod:`monitor.production`),
    or with ``debug`` under Werkzeug's development server."""
    host = host or settings.monitor_host
    port = settings.monitor_port if port is None else port
    normalise_prefix(settings.monitor_url_prefix)  # a bad prefix or hide setting: refused before any fork
    offline.check(settings.monitor_hide_offline_after)
    if not debug:
        from monitor.production import serve_production

        check_bind(settings, host)
        serve_production(settings, host, port, lambda: Monitor(settings, host, port, web=False))
        return
    monitor = Monitor(settings, host, port)
    monitor.start()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping the monitor", signum)
        threading.Thread(target=monitor.server.shutdown, daemon=True).start()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        monitor.serve_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        monitor.stop()


def main() -> None:
    """``python -m monitor.server [--host H] [--port P]``: the environment's settings."""
    import argparse

    parser = argparse.ArgumentParser(description="jobqueue monitor")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--debug", action="store_true", help="Werkzeug's development server")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(Settings.from_env(), args.host, args.port, debug=args.debug)


if __name__ == "__main__":
    main()
