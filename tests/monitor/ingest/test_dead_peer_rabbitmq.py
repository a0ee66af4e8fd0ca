"""Dead-peer detection on RabbitMQ: the monitor's collector (Celery's event receiver) asks for AMQP
heartbeats (JOBQUEUE_BROKER_HEARTBEAT), so a link that silently stops forwarding is dropped
after about two of them; the collector reconnects and hears events again. Real RabbitMQ (this
test's vhost), a proxy that freezes its connections."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from jobqueue.config import Settings
from jobqueue.transport.app import create_app
from monitor.ingest.collector import EventCollector, wait_connected
from monitor.ingest.hub import ChangeHub
from monitor.ingest.writer import Writer
from monitor.store import Store
from tests.blackhole import BlackholeProxy
from tests.conftest import RABBITMQ_URL
from tests.helpers import wait_for

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow, pytest.mark.timeout(120)]

HEARTBEAT = 2.0


def test_the_collector_drops_a_frozen_amqp_link_after_two_heartbeats_and_hears_events_again(
        redis_url: str, machine_id: str, tmp_path: Path):
    # Given a collector whose RabbitMQ connection goes through the proxy, hearing events
    parts = urlsplit(RABBITMQ_URL)
    proxy = BlackholeProxy(parts.port or 5672, parts.hostname or "127.0.0.1").start()
    via = urlunsplit((parts.scheme, f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}", parts.path,
                      parts.query, parts.fragment))
    settings = Settings(broker_url=via, result_backend=redis_url, machine_id=machine_id,
                        broker_heartbeat=HEARTBEAT).resolved()
    app = create_app(settings)
    direct = create_app(settings.model_copy(update={"broker_url": RABBITMQ_URL}))
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    writer = Writer(store, ChangeHub()).start()
    collector = EventCollector(app, writer, backoff_start=0.1, backoff_cap=0.5).start()
    try:
        assert wait_connected(collector, 20) and not collector.raw

        def heard() -> bool:
            """Send one event; True once the collector counted it (polled for up to 2 s: an event
            takes a moment to travel, and the count must move past the one before the send)."""
            before = collector.received
            with direct.events.default_dispatcher(hostname=f"probe@{machine_id}") as dispatcher:
                dispatcher.send("worker-heartbeat", freq=2.0)
            deadline = time.monotonic() + 2.0
            while collector.received <= before and time.monotonic() < deadline:
                time.sleep(0.05)  # polling the count with a deadline
            return collector.received > before

        wait_for(heard, 20, interval=0.5, what="an event through the proxy")
        # When the proxy silently freezes its connection
        assert proxy.blackhole() >= 1
        frozen_at = time.monotonic()
        # Then the collector drops it after about two heartbeats, and reconnects
        wait_for(lambda: collector.reconnects > 0, 30, interval=0.1, what="the collector to reconnect")
        assert time.monotonic() - frozen_at <= 3 * HEARTBEAT + 5.0
        # And it hears events again
        wait_for(heard, 30, interval=0.5, what=f"events after the reconnect ({collector.stats()})")
    finally:
        collector.stop()
        writer.stop()
        store.close()
        app.close()
        direct.close()
        proxy.stop()
