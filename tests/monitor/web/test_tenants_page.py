"""A tenant's dashboard in headless Chromium against a real monitor process: logged in with a
tenant's key it lists only that tenant's jobs, live; an admin's lists every job with its
tenant (issue 24, point 5)."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.helpers import wait_for
from tests.monitor import browser
from tests.monitor.web.test_tenants import ADMIN, TOKEN, new_key, submit

chromium = browser.chromium

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


new_page = browser.new_page


def log_in(page: Any, url: str, key: str) -> None:
    """Open ``/jobs``, be sent to the login page, log in with ``key``, land on ``/jobs`` live."""
    page.goto(url + "/jobs")
    page.wait_for_selector("#page-login-form")
    page.fill("#credential", key)
    page.click("#page-login-submit")
    page.wait_for_url(url + "/jobs")
    page.wait_for_selector("#conn.conn-live")


def listed(page: Any) -> set[str]:
    return set(page.eval_on_selector_all("[data-job-id]", "rows => rows.map((r) => r.dataset.jobId)"))


def test_a_tenants_dashboard_lists_only_its_own_jobs_live_and_an_admins_lists_all_with_their_tenant(
        start_monitor, new_page):
    # Given a monitor with jobs of acme and globex, submitted with their operators' keys
    monitor = start_monitor(MONITOR_TOKEN=TOKEN)
    acme_op, globex_op = new_key(monitor, "operator", "acme"), new_key(monitor, "operator", "globex")
    acme_jobs = submit(monitor, acme_op, count=2)
    globex_jobs = submit(monitor, globex_op)
    acme_viewer = new_key(monitor, "viewer", "acme")["Authorization"].removeprefix("Bearer ")
    # When acme's viewer logs in to the jobs page
    page = new_page()
    log_in(page, monitor.url, acme_viewer)
    # Then it lists acme's jobs, and none of globex's
    wait_for(lambda: listed(page) == set(acme_jobs), 20, interval=0.2, what=f"acme's jobs listed: {listed(page)}")
    # And a job acme submits now appears live, while one globex submits does not
    more = submit(monitor, acme_op)[0]
    hidden = submit(monitor, globex_op)[0]
    wait_for(lambda: more in listed(page), 20, interval=0.2, what="acme's new job to appear")
    seq = requests.get(monitor.url + "/api/state", headers=ADMIN, timeout=10).json()["seq"]
    page.wait_for_function(f"() => Number(document.body.dataset.seq) >= {seq}")
    assert listed(page) == {*acme_jobs, more}
    assert page.locator(".tag-tenant").count() == 0  # its own tenant is no news to it
    # And globex's job page is a 404 for it
    assert page.goto(f"{monitor.url}/jobs/{hidden}").status == 404
    # While the admin's page lists every job, each of them tagged with its tenant
    admin = new_page()
    log_in(admin, monitor.url, TOKEN)
    everything = {*acme_jobs, more, *globex_jobs, hidden}
    wait_for(lambda: listed(admin) == everything, 20, interval=0.2, what="every job listed for the admin")
    tags = admin.eval_on_selector_all("[data-job-id] .tag-tenant", "tags => tags.map((t) => t.textContent)")
    assert sorted(tags) == ["acme"] * 3 + ["globex"] * 2
