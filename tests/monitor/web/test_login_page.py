"""The login page, sessions and the admin page in headless Chromium against a real monitor
process, with the monitor's CSP enforced (issue 24, points 1, 3 and 8)."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.helpers import wait_for
from tests.monitor import browser

chromium = browser.chromium

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TOKEN = "login-page-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


new_page = browser.new_page


def make_key(monitor: Any, role: str) -> tuple[str, str]:
    res = requests.post(f"{monitor.url}/api/keys", json={"role": role}, headers=ADMIN, timeout=10)
    assert res.status_code == 201, res.text
    return res.json()["key"], res.json()["info"]["id"]


def log_in(page: Any, secret: str) -> None:
    page.fill("#credential", secret)
    page.click("#page-login-submit")


def test_a_viewer_logs_in_sees_the_live_fleet_without_controls_and_logs_out(start_monitor, new_page):
    # Given a monitor with a token, no public reads, and a viewer key
    monitor = start_monitor(MONITOR_TOKEN=TOKEN)
    key, key_id = make_key(monitor, "viewer")
    page = new_page()
    # When the viewer opens the jobs page
    page.goto(monitor.url + "/jobs")
    # Then the login page is shown instead
    page.wait_for_selector("#page-login-form")
    assert "/login?next=/jobs" in page.url
    # When a wrong key is typed, the page says so and stays
    log_in(page, "jq_000000000000_" + "x" * 43)
    page.wait_for_selector("#page-login-error:has-text('wrong')")
    assert "/login" in page.url
    # When the viewer's key is typed
    log_in(page, key)
    # Then the jobs page opens, its websocket is live on the session cookie, and no control is offered
    page.wait_for_url(monitor.url + "/jobs")
    page.wait_for_selector("#conn.conn-live")
    page.wait_for_selector("#auth-state:has-text('logged in (viewer)')")
    assert not page.evaluate("document.body.classList.contains('can-control')")
    cookie = next(c for c in page.context.cookies() if c["name"] == "jobqueue_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["expires"] > 0
    assert page.evaluate("document.cookie") == ""  # no script can read it
    # When the viewer logs out
    page.click("#logout")
    # Then the login page is back, and the pages stay closed
    page.wait_for_url(monitor.url + "/login")
    page.goto(monitor.url + "/")
    page.wait_for_selector("#page-login-form")
    # And the login, the refused one and the logout are in the audit trail
    def trail_when_written() -> list[dict[str, Any]]:  # the monitor's writer adds the entries: polled
        entries = requests.get(f"{monitor.url}/api/audit", headers=ADMIN, timeout=10).json()["entries"]
        seen = {(e["action"], e["outcome"]) for e in entries}
        return entries if {("login", "ok"), ("login", "refused"), ("logout", "ok")} <= seen else []

    trail = wait_for(trail_when_written, 10, what="the login, the refusal and the logout audited")
    assert any(e["target"] == f"key:{key_id}" for e in trail)


def test_a_forged_or_expired_session_goes_back_to_the_login_page(start_monitor, new_page):
    # Given a monitor whose sessions last 3 seconds, and an operator key
    monitor = start_monitor(MONITOR_TOKEN=TOKEN, MONITOR_SESSION_SECONDS="3")
    key, _ = make_key(monitor, "operator")
    # When a browser arrives with a forged session cookie
    page = new_page()
    page.context.add_cookies([{"name": "jobqueue_session", "value": "eyJzIjoidG9rZW4iLCJyIjoiYWRtaW4ifQ.x.y",
                               "url": monitor.url}])
    page.goto(monitor.url + "/")
    # Then it is shown the login page
    page.wait_for_selector("#page-login-form")
    # When the operator logs in, the fleet opens with controls
    log_in(page, key)
    page.wait_for_selector("#conn.conn-live")
    page.wait_for_selector("#auth-state:has-text('logged in (operator)')")
    # And once the session has expired, the next visit is sent to the login page again
    def sent_to_login() -> bool:
        page.goto(monitor.url + "/stats")
        return "/login?next=/stats" in page.url

    wait_for(sent_to_login, 20, interval=0.5, what="the expired session to be refused")


def test_the_login_link_of_jobqueue_up_logs_in_through_the_login_page(start_monitor, new_page):
    # Given a monitor with a token, and the login link `jobqueue up` prints
    monitor = start_monitor(MONITOR_TOKEN=TOKEN)
    page = new_page()
    # When the link is opened
    page.goto(f"{monitor.url}/#token={TOKEN}")
    # Then the fleet opens logged in as admin, and the token is gone from the address bar
    page.wait_for_selector("#conn.conn-live")
    page.wait_for_selector("#auth-state:has-text('logged in (admin)')")
    assert "token" not in page.url and page.url.rstrip("/") == monitor.url


def test_an_admin_creates_and_revokes_a_key_on_the_admin_page(start_monitor, new_page):
    # Given a monitor with a token, an admin logged in on the admin page
    monitor = start_monitor(MONITOR_TOKEN=TOKEN)
    page = new_page()
    page.goto(monitor.url + "/admin")
    log_in(page, TOKEN)
    page.wait_for_url(monitor.url + "/admin")
    # When the admin creates an operator key for tenant acme
    page.select_option("#key-role", "operator")
    page.fill("#key-tenant", "acme")
    page.fill("#key-expires", "90d")
    page.click("#key-form button[type=submit]")
    # Then the key is shown once, it works, and the list and the audit trail show it
    page.wait_for_selector("#key-new:not([hidden])")
    secret = page.text_content("#key-secret") or ""
    assert secret.startswith("jq_")
    bearer = {"Authorization": f"Bearer {secret}"}
    assert requests.get(monitor.url + "/api/jobs", headers=bearer, timeout=10).status_code == 200
    key_id = secret.split("_")[1]
    row = f"#keys tr[data-key-id='{key_id}']"
    page.wait_for_selector(f"{row}:has-text('acme')")
    page.wait_for_selector("#audit td:has-text('key.create')")
    # When the admin revokes it
    page.click(f"{row} button.revoke")
    # Then it is refused from then on
    page.wait_for_selector(f"{row}:has-text('revoked')")
    assert requests.get(monitor.url + "/api/jobs", headers=bearer, timeout=10).status_code == 401
    # And a viewer cannot open the admin page
    viewer, _ = make_key(monitor, "viewer")
    other = new_page()
    other.goto(monitor.url + "/admin")
    log_in(other, viewer)
    other.wait_for_selector("body")
    assert requests.get(monitor.url + "/admin", headers={"Authorization": f"Bearer {viewer}"},
                        timeout=10, allow_redirects=False).status_code == 403


def test_a_logged_in_admin_visiting_another_origin_acts_on_nothing(start_monitor, new_page):
    from tests.monitor.web.test_hostile import cross_site_attack

    # Given an admin logged in with a session cookie, and an attacker's page on another origin of
    # the same host (same site: the browser sends the cookie, so only the Origin and JSON rules stand)
    monitor = start_monitor(MONITOR_TOKEN=TOKEN)
    page = new_page()
    page.goto(monitor.url + "/login")
    log_in(page, TOKEN)
    page.wait_for_selector("#conn.conn-live")
    keys_url, submit_url = f"{monitor.url}/api/keys", f"{monitor.url}/api/jobs"
    # When the admin opens the attacker's page in the same browser
    statuses, results = cross_site_attack(page, monitor.url)
    # Then every POST that reached the monitor was refused, the JSON one never left the browser
    # (its preflight gets no CORS grant), and no key or job was made
    assert all(status == 403 for method, status in statuses if method == "POST"), statuses
    assert "blocked" in results
    assert requests.get(keys_url, headers=ADMIN, timeout=10).json()["keys"] == []
    assert requests.get(submit_url, headers=ADMIN, timeout=10).json()["total"] == 0
