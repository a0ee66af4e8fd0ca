"""The fleet page at 200 workers, in a real headless Chromium: a compact table with sort and
filter, fed by replayed worker events (heartbeats and connector reports on the real event
stream, through a real monitor process), kept live over the websocket, and resumed with
``since=`` after the monitor restarts."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from bench import fleet_events
from tests.helpers import wait_for
from tests.monitor import browser
from tests.monitor.browser import MonitorProcess, Pages

chromium = browser.chromium
start_monitor = browser.start_monitor

pytestmark = [pytest.mark.chromium, pytest.mark.slow, pytest.mark.timeout(240)]

WORKERS = 200
ROWS_JS = """() => [...document.querySelectorAll('#fleet-table tbody tr[data-worker]')].map((r) => ({
  name: r.dataset.worker, status: r.dataset.status, machine: r.dataset.machine,
  states: [...r.querySelectorAll('.badge')].map((b) => b.dataset.status),
  tags: [...r.querySelectorAll('.chip-tag')].map((t) => t.textContent)}))"""


#: Reads open to all, controls behind the token, as browser.start_monitor starts its monitors.
READS_OPEN = {"JOBQUEUE_MONITOR_TOKEN": browser.TOKEN, "JOBQUEUE_MONITOR_PUBLIC_READ": "true"}


def rows(page: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = page.evaluate(ROWS_JS)
    return found


def _db(redis_url: str) -> int:
    return int(redis_url.rsplit("/", 1)[1])


def test_200_replayed_workers_show_in_a_table_that_sorts_and_filters_and_stays_live(
        chromium, start_monitor, redis_url):
    # Given a monitor and 200 workers on 50 machines announcing themselves on the event stream
    monitor = start_monitor()
    client = redis.Redis.from_url(redis_url)
    fleet_events.announce(client, _db(redis_url), WORKERS, 60.0)
    wait_for(lambda: len(monitor.get("/api/state")["workers"]) == WORKERS, 30, what="200 workers in the monitor")
    pages = Pages(chromium, monitor.url)
    try:
        # When the fleet page opens, then a fleet that big is shown as the table, every worker a row
        page = pages.open("/")
        page.wait_for_function("(n) => document.querySelectorAll('#fleet-table tbody tr').length === n", arg=WORKERS)
        shown = rows(page)
        assert [r["name"] for r in shown] == sorted(fleet_events.worker_name(n) for n in range(WORKERS))
        assert page.text_content("#fleet-count") == f"{WORKERS} of {WORKERS} workers"
        # And each name links to that worker's page
        assert page.get_attribute("tr[data-worker='gpu0@fleet000'] a.worker-link", "href") == "/workers/gpu0%40fleet000"
        # When the worker column is clicked again, then the order is reversed
        page.click("#fleet-table th button[data-sort=name]")
        assert [r["name"] for r in rows(page)] == sorted((r["name"] for r in shown), reverse=True)
        # And sorting by machine groups each machine's four workers
        page.click("#fleet-table th button[data-sort=machine]")
        machines = [r["machine"] for r in rows(page)]
        assert machines == sorted(machines)
        # When filtered by connector state "idle", then exactly the idle workers are left
        page.select_option("select[data-filter=connector]", "idle")
        idle = rows(page)
        expected = {fleet_events.worker_name(n) for n in range(WORKERS) if fleet_events.STATUSES[n % 8] == "idle"}
        assert {r["name"] for r in idle} == expected and all(r["states"] == ["idle"] for r in idle)
        # And with the tag "tier:a" as well, only those that also carry it
        page.select_option("select[data-filter=tag]", "tier:a")
        both = rows(page)
        assert both and all("tier:a" in r["tags"] and r["states"] == ["idle"] for r in both)
        assert len(both) < len(idle)
        # And the service and machine filters narrow it the same way
        page.select_option("select[data-filter=tag]", "")
        page.select_option("select[data-filter=connector]", "")
        page.select_option("select[data-filter=service]", "comfyui")
        assert len(rows(page)) == WORKERS // 2
        page.select_option("select[data-filter=machine]", "fleet001")
        assert {r["name"] for r in rows(page)} == {"gpu1@fleet001", "gpu3@fleet001"}
        page.select_option("select[data-filter=machine]", "")
        page.select_option("select[data-filter=service]", "")
        # When a worker's connector turns to error on the event stream, then its row follows live
        report = fleet_events.connector_status(0, time.time(), seq=5)
        report["status"] = "error"
        fleet_events.publish(client, _db(redis_url), [report])
        page.wait_for_function("() => document.querySelector('tr[data-worker=\"gpu0@fleet000\"] .badge')"
                               ".dataset.status === 'error'")
        # And the cards view is still one click away
        page.click("#fleet-views button[data-view=cards]")
        page.wait_for_function("(n) => document.querySelectorAll('article[data-worker]').length === n", arg=WORKERS)
        assert page.evaluate("window.__openedOnce") is True and pages.errors == []
    finally:
        pages.close()
        client.close()


def test_a_dashboard_keeps_receiving_deltas_and_resumes_with_since_after_the_monitor_restarts(
        chromium, settings, tmp_path, redis_url):
    # Given a monitor with a few replayed workers and a fleet page open on it
    monitor = MonitorProcess(settings, tmp_path / "monitor-a.log").start(**READS_OPEN)
    client = redis.Redis.from_url(redis_url)
    fleet_events.announce(client, _db(redis_url), 4, 60.0)
    pages = Pages(chromium, monitor.url)
    restarted: MonitorProcess | None = None
    try:
        page = pages.open("/?view=table")
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        page.wait_for_function("() => document.querySelectorAll('#fleet-table tbody tr').length === 4")
        # When the monitor restarts on the same port and store
        monitor.stop()
        page.wait_for_selector("#conn:not(.conn-live)")
        seq = int(page.get_attribute("body", "data-seq") or "0")
        restarted = MonitorProcess(settings, tmp_path / "monitor-b.log", port=monitor.port)
        restarted.start(**READS_OPEN)
        page.wait_for_selector("#conn.conn-live")
        # Then the page reconnected asking for what it missed, without reloading
        wait_for(lambda: any(f"since={seq}" in url for url in sockets), 10, what="a since= reconnect")
        # And a change after the restart still arrives live
        report = fleet_events.connector_status(1, time.time(), seq=7)
        report["status"] = "error"
        fleet_events.publish(client, _db(redis_url), [report])
        page.wait_for_function("() => document.querySelector('tr[data-worker=\"gpu1@fleet000\"] .badge')"
                               ".dataset.status === 'error'")
        assert page.evaluate("window.__openedOnce") is True and pages.errors == []
    finally:
        pages.close()
        client.close()
        monitor.stop()
        if restarted is not None:
            restarted.stop()
