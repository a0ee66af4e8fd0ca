"""Remote control of any Celery worker, as Flower offers it, against a plain Celery app's real
prefork worker and a real monitor: inspect, pool grow/shrink/autoscale, consumers, limits,
revoke with terminate; roles, audit and bad input; the worker page in Chromium (issue 28, point 5)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.helpers import wait_for
from tests.monitor import browser
from tests.monitor.plain_app import plain_worker_process

chromium = browser.chromium
start_monitor = browser.start_monitor

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ADMIN = {"Authorization": f"Bearer {browser.TOKEN}"}
NODE = "plain@box-r"


@pytest.fixture
def prefork(tmp_path: Any, redis_url: str) -> Iterator[Any]:
    with plain_worker_process(tmp_path, redis_url, pool="prefork", concurrency=1, node=NODE) as app:
        yield app


def processes(monitor: Any) -> int:
    answer = requests.get(f"{monitor.url}/api/workers/{NODE}/inspect", headers=ADMIN, timeout=15)
    return len(((answer.json().get("stats") or {}).get("pool") or {}).get("processes") or [])


def post(monitor: Any, path: str, body: dict[str, Any], headers: dict[str, str] = ADMIN) -> Any:
    return requests.post(monitor.url + path, json=body, headers=headers, timeout=15)


def test_a_workers_pool_queues_and_limits_are_driven_from_the_monitor(start_monitor, prefork):
    monitor = start_monitor()
    wait_for(lambda: processes(monitor) == 1, 30, interval=0.5, what="the worker answering inspect")
    seen = requests.get(f"{monitor.url}/api/workers/{NODE}/inspect", headers=ADMIN, timeout=15).json()
    # What the worker holds, asked of the worker itself
    assert "plain.add" in seen["registered"] and [q["name"] for q in seen["active_queues"]] == ["celery"]
    # Pool: grow by one, then shrink back
    assert post(monitor, f"/api/workers/{NODE}/pool", {"action": "grow", "n": 1}).status_code == 202
    wait_for(lambda: processes(monitor) == 2, 20, interval=0.5, what="two processes")
    assert post(monitor, f"/api/workers/{NODE}/pool", {"action": "shrink", "n": 1}).status_code == 202
    wait_for(lambda: processes(monitor) == 1, 20, interval=0.5, what="one process again")
    # Autoscale with min above max is refused before anything is sent
    bad = post(monitor, f"/api/workers/{NODE}/pool", {"action": "autoscale", "min": 4, "max": 2})
    assert bad.status_code == 400 and "above max" in bad.json()["error"]["message"]
    # Consumers: add a queue, then cancel it
    assert post(monitor, f"/api/workers/{NODE}/consumers", {"action": "add", "queue": "extra"}).status_code == 202
    names = lambda: [q["name"] for q in requests.get(f"{monitor.url}/api/workers/{NODE}/inspect", headers=ADMIN,  # noqa: E731
                                                         timeout=15).json()["active_queues"]]
    wait_for(lambda: "extra" in names(), 10, interval=0.5, what="the added consumer")
    assert post(monitor, f"/api/workers/{NODE}/consumers", {"action": "cancel", "queue": "extra"}).status_code == 202
    wait_for(lambda: "extra" not in names(), 10, interval=0.5, what="the cancelled consumer")
    # Limits on a task type
    limited = post(monitor, "/api/task-types/plain.add/limits", {"rate_limit": "5/m", "time_limit": 30,
                                                                  "soft_time_limit": 20})
    assert limited.status_code == 202 and len(limited.json()["replies"]) == 2
    assert post(monitor, "/api/task-types/plain.add/limits", {"rate_limit": "lots"}).status_code == 400
    # Every control is in the audit trail
    def audited() -> set[str]:
        entries = requests.get(monitor.url + "/api/audit?limit=50", headers=ADMIN, timeout=10).json()["entries"]
        found = {e["action"] for e in entries}
        return found if {"pool", "consumer", "limits"} <= found else set()

    actions = wait_for(audited, 10, what="the controls audited")
    assert {"pool", "consumer", "limits"} <= actions


def test_a_running_task_is_revoked_with_terminate_and_ends_revoked(start_monitor, prefork):
    monitor = start_monitor()
    running = prefork.send_task("plain.slow", args=(1, 60))
    wait_for(lambda: (r := requests.get(f"{monitor.url}/api/jobs/{running.id}", headers=ADMIN, timeout=10))
             .status_code == 200 and r.json()["status"] == "processing", 30, what="the slow task running")
    answer = post(monitor, f"/api/tasks/{running.id}/revoke", {"terminate": True, "signal": "SIGKILL"})
    assert answer.status_code == 202
    wait_for(lambda: running.state == "REVOKED", 20, interval=0.2, what="the task revoked")
    assert post(monitor, "/api/tasks/no-such-task/revoke", {}).status_code == 404
    assert post(monitor, f"/api/tasks/{running.id}/revoke", {"signal": "SIGNOPE"}).status_code == 400


def test_roles_are_checked_and_a_worker_that_does_not_answer_is_a_504(start_monitor, prefork):
    monitor = start_monitor()
    keys = {role: requests.post(monitor.url + "/api/keys", json={"role": role}, headers=ADMIN, timeout=10).json()["key"]
            for role in ("viewer", "operator")}
    viewer, operator = ({"Authorization": f"Bearer {keys[r]}"} for r in ("viewer", "operator"))
    assert post(monitor, f"/api/workers/{NODE}/pool", {"action": "grow"}, viewer).status_code == 403
    assert post(monitor, f"/api/workers/{NODE}/pool", {"action": "grow"}, operator).status_code == 403
    wait_for(lambda: processes(monitor) == 1, 30, interval=0.5, what="the worker answering inspect")
    assert post(monitor, f"/api/workers/{NODE}/consumers", {"action": "add", "queue": "x"}, operator).status_code == 202
    gone = requests.get(f"{monitor.url}/api/workers/nobody@nowhere/inspect", headers=ADMIN, timeout=15)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
    # A worker the monitor knows that has stopped answering is a 504
    prefork.control.shutdown(destination=[NODE])
    wait_for(lambda: requests.get(f"{monitor.url}/api/workers/{NODE}", headers=ADMIN, timeout=10)
             .json().get("status") == "offline", 30, interval=0.5, what="the worker offline")
    silent = requests.get(f"{monitor.url}/api/workers/{NODE}/inspect", headers=ADMIN, timeout=15)
    assert silent.status_code == 504 and silent.json()["error"]["code"] == "no_reply"


def test_the_worker_page_shows_the_pool_and_grows_it(start_monitor, prefork, chromium):
    monitor = start_monitor()
    wait_for(lambda: processes(monitor) == 1, 30, interval=0.5, what="the worker answering inspect")
    context = chromium.new_context(viewport=browser.LAPTOP)
    try:
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.add_init_script(f"sessionStorage.setItem('jobqueue.monitor.auth', 'Bearer {browser.TOKEN}')")
        # The fleet page's card links the worker's name to its page
        page.goto(f"{monitor.url}/")
        page.click(f"article[data-worker='{NODE}'] a.worker-name")
        page.wait_for_url(f"**/workers/{NODE.replace('@', '%40')}")
        page.wait_for_selector("#pool-size[data-processes='1']")
        page.wait_for_selector("#worker-registered tr[data-task-type='plain.add']")
        page.wait_for_selector("#worker-queues li[data-queue='celery']")
        page.click("#pool-grow")
        page.wait_for_selector("#pool-size[data-processes='2']")
    finally:
        context.close()
