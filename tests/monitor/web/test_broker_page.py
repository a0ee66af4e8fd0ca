"""The broker page in headless Chromium against a real monitor process: queues read from the
broker with their priority levels, and a purge (admins only, audited) that empties every level
and cancels the jobs it removes (issue 28, point 6)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from jobqueue import get_job, submit_job
from jobqueue.states import JobStatus
from tests.helpers import quick, wait_for
from tests.monitor import browser

chromium = browser.chromium
start_monitor = browser.start_monitor

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ADMIN = {"Authorization": f"Bearer {browser.TOKEN}"}


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    """A page that answers "OK" to confirmation dialogs (the purge asks first)."""
    context = chromium.new_context(viewport=browser.LAPTOP)
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    opened.on("dialog", lambda dialog: dialog.accept())
    opened.add_init_script(f"sessionStorage.setItem('jobqueue.monitor.auth', 'Bearer {browser.TOKEN}')")
    yield opened
    context.close()


def test_an_admin_sees_a_queues_priority_levels_and_purges_it_from_the_broker_page(start_monitor, page, app,
                                                                                   machine_id):
    # Given a monitor, and jobs at three priorities waiting in a queue nobody consumes
    monitor = start_monitor()
    queue = f"held.{machine_id}"
    handles = [submit_job("simulation", quick(n), priority=p, queue=queue, app=app) for n, p in enumerate((0, 5, 9))]
    # When an admin opens the broker page
    page.goto(monitor.url + "/broker")
    row = f"#broker-queues tr[data-queue='{queue}']"
    # Then the queue is listed from the broker with its 3 messages over 3 levels
    page.wait_for_selector(f"{row} .queue-depth:text-is('3')")
    assert (page.text_content(f"{row} td:nth-child(3)") or "").count(":") == 3
    # When the admin purges it
    page.click(f"{row} button[data-control='Purge']")
    # Then the page shows it empty, its jobs read cancelled, and the audit trail has the purge
    page.wait_for_selector(f"{row} .queue-depth:text-is('0')")
    assert all(get_job(h.id, app=app).status() == JobStatus.CANCELLED for h in handles)
    entries = wait_for(lambda: requests.get(monitor.url + "/api/audit?action=purge", headers=ADMIN,
                                            timeout=10).json()["entries"], 10, what="the purge audited")
    assert entries[0]["target"].endswith(f"/api/queues/{queue}/purge") or queue in entries[0]["target"]
    assert "removed=3" in (entries[0].get("detail") or "")
    # And the monitor shows the jobs cancelled
    wait_for(lambda: all(requests.get(f"{monitor.url}/api/jobs/{h.id}", headers=ADMIN, timeout=10)
                         .json()["status"] == "cancelled" for h in handles), 15, what="the monitor shows them cancelled")


def test_a_viewer_cannot_purge_and_the_queue_keeps_its_messages(start_monitor, app, machine_id):
    monitor = start_monitor()
    queue = f"held.{machine_id}"
    submit_job("simulation", quick(1), queue=queue, app=app)
    answer = requests.post(monitor.url + "/api/keys", json={"role": "viewer"}, headers=ADMIN, timeout=10)
    viewer = {"Authorization": f"Bearer {answer.json()['key']}"}
    # When a viewer asks for a purge
    refused = requests.post(f"{monitor.url}/api/queues/{queue}/purge", json={}, headers=viewer, timeout=10)
    # Then it is refused and the message is still there
    assert refused.status_code == 403
    listed = requests.get(monitor.url + "/api/broker", headers=viewer, timeout=10).json()
    assert {q["name"]: q["depth"] for q in listed["queues"]}[queue] == 1
