"""Single sign-on end to end in headless Chromium (issue 24, point 4): a real monitor process,
a real worker, and a real OpenID Connect provider the test starts (oidc-provider-mock, behind a
PKCE gate) on another site (``localhost`` vs the monitor's ``127.0.0.1``), CSP enforced."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from jobqueue.up.embedded import free_port
from tests.helpers import wait_for
from tests.monitor import browser
from tests.monitor.web import sso_providers
from tests.monitor.web.sso_providers import ADMIN, FakeGitHub, GitHubUser

chromium = browser.chromium
provider = sso_providers.provider
oidc_monitor = sso_providers.oidc_monitor

pytestmark = [pytest.mark.chromium, pytest.mark.slow, pytest.mark.timeout(240),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]  # the mock provider's Authlib use


new_page = browser.new_page


def sign_on(page: Any, provider_url: str, sub: str) -> None:
    """On the login page: click the single sign-on button, and approve as ``sub`` at the provider."""
    page.click("#sso-login")
    page.wait_for_url(provider_url + "/oauth2/authorize**")
    page.fill("input[name=sub]", sub)
    page.click("button:has-text('Authorize')")


def trail(monitor: Any) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = requests.get(f"{monitor.url}/api/audit", headers=ADMIN, timeout=10).json()["entries"]
    return entries


def test_a_permitted_user_signs_on_sees_the_fleet_and_logs_out(oidc_monitor, provider, start_worker, new_page):
    # Given a monitor with OIDC single sign-on and a worker in the fleet
    monitor = oidc_monitor()
    worker = start_worker("gpu0")
    page = new_page()
    # When alice (acme.test) opens the fleet page, she is sent to the login page with its button
    page.goto(monitor.url + "/")
    page.wait_for_selector("#sso-login:has-text('Log in with single sign-on')")
    # And she signs on at the provider
    sign_on(page, provider.url, "alice")
    # Then she is back on the fleet page, live, as a viewer, and sees the worker
    page.wait_for_url(monitor.url + "/")
    page.wait_for_selector("#conn.conn-live")
    page.wait_for_selector("#auth-state:has-text('logged in (viewer)')")
    page.wait_for_selector(f'[data-worker="{worker.node_name}"]')
    assert not page.evaluate("document.body.classList.contains('can-control')")
    # And her session cookie is HttpOnly, SameSite=Lax and expires; no script can read it
    cookie = next(c for c in page.context.cookies() if c["name"] == "jobqueue_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["expires"] > 0
    assert page.evaluate("document.cookie") == ""
    assert not any(c["name"] == "jobqueue_sso" for c in page.context.cookies())  # the login's state is spent
    # When she logs out
    page.click("#logout")
    # Then the login page is back and the fleet stays closed
    page.wait_for_url(monitor.url + "/login")
    page.goto(monitor.url + "/")
    page.wait_for_selector("#sso-login")
    assert "/login?next=/" in page.url
    # And the login and the logout are audited under her name
    # (the monitor's writer adds the entries: polled)
    wanted = {("login", "ok", "oidc:alice@acme.test"), ("logout", "ok", "oidc:alice@acme.test")}
    wait_for(lambda: wanted <= {(e["action"], e["outcome"], e["subject"]) for e in trail(monitor)}, 10,
             what="her login and logout in the audit trail")


def test_a_user_from_another_domain_is_refused(oidc_monitor, provider, new_page):
    # Given a monitor that lets acme.test in
    monitor = oidc_monitor()
    page = new_page()
    page.goto(monitor.url + "/jobs")
    # When bob of other.test signs on
    sign_on(page, provider.url, "bob")
    # Then the login page says he may not log in, and nothing opens for him
    page.wait_for_selector("#sso-error:has-text('bob@other.test may not log in')")
    browser.screenshot(page, "login-sso-refused")
    assert not any(c["name"] == "jobqueue_session" for c in page.context.cookies())
    page.goto(monitor.url + "/jobs")
    page.wait_for_selector("#sso-login")
    assert "/login?next=/jobs" in page.url
    # And the refusal is audited with who he is
    def refused() -> list[str]:
        return [e["target"] for e in trail(monitor) if e["action"] == "login" and e["outcome"] == "refused"]

    wait_for(refused, 10, what="the refusal in the audit trail")  # (the monitor's writer adds it)
    assert refused() == ["oidc:bob@other.test"]


def test_an_expired_single_sign_on_session_goes_back_to_the_login_page(oidc_monitor, provider, new_page):
    # Given a monitor whose sessions last 3 seconds, and root (fleet-admins) signed on
    monitor = oidc_monitor(MONITOR_SESSION_SECONDS="3")
    page = new_page()
    page.goto(monitor.url + "/stats")
    sign_on(page, provider.url, "root")
    page.wait_for_url(monitor.url + "/stats")
    page.wait_for_selector("#auth-state:has-text('logged in (admin)')")

    # When the session has expired, the next visit is sent to the login page again
    def sent_to_login() -> bool:
        page.goto(monitor.url + "/stats")
        return "/login?next=/stats" in page.url

    wait_for(sent_to_login, 20, interval=0.5, what="the expired session to be refused")
    page.wait_for_selector("#sso-login")


def test_cross_site_pages_cannot_act_with_a_single_sign_on_session(oidc_monitor, provider, new_page):
    from tests.monitor.web.test_hostile import cross_site_attack

    # Given root signed on as admin, and an attacker's page on another origin of the same host
    # (same site: the browser sends the cookie, so only the Origin and JSON rules stand)
    monitor = oidc_monitor()
    page = new_page()
    page.goto(monitor.url + "/login")
    sign_on(page, provider.url, "root")
    page.wait_for_selector("#auth-state:has-text('logged in (admin)')")
    keys_url, submit_url = f"{monitor.url}/api/keys", f"{monitor.url}/api/jobs"
    # When the admin opens the attacker's page in the same browser
    statuses, results = cross_site_attack(page, monitor.url, form_to="/api/jobs")
    # Then every POST that reached the monitor was refused, the JSON one never left the browser,
    # and no key or job was made
    assert all(status == 403 for method, status in statuses if method == "POST"), statuses
    assert "blocked" in results
    assert requests.get(keys_url, headers=ADMIN, timeout=10).json()["keys"] == []
    assert requests.get(submit_url, headers=ADMIN, timeout=10).json()["total"] == 0
    # And the same session acts from the monitor's own page
    assert page.evaluate("""async () => (await fetch('/api/keys', {method: 'POST', credentials: 'same-origin',
        headers: {'Content-Type': 'application/json'}, body: JSON.stringify({role: 'viewer'})})).status""") == 201


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    fake = FakeGitHub()
    fake.users["octo"] = GitHubUser("octo", [
        {"email": "octo@acme.test", "primary": True, "verified": True, "visibility": "private"}], orgs=["acme-ops"])
    yield fake
    fake.stop()


def test_github_signs_on_through_the_same_button_and_code(start_monitor, github, new_page):
    # Given a monitor whose single sign-on is GitHub (the fake, in GitHub Enterprise's layout)
    port = free_port()
    github.redirect_uri = f"http://127.0.0.1:{port}/auth/callback"
    monitor = start_monitor(port=port, MONITOR_TOKEN=sso_providers.TOKEN, MONITOR_SSO_PROVIDER="github",
                            MONITOR_SSO_URL=github.url, MONITOR_SSO_CLIENT_ID=github.client_id,
                            MONITOR_SSO_CLIENT_SECRET=github.client_secret, MONITOR_SSO_ROLES="acme-ops=operator")
    github.signed_in = "octo"
    page = new_page()
    # When octo opens the jobs page and logs in with GitHub, authorizing the app there
    page.goto(monitor.url + "/jobs")
    page.click("#sso-login:has-text('Log in with GitHub')")
    page.wait_for_url(github.url + "/login/oauth/authorize**")
    page.click("#js-oauth-authorize-btn")
    # Then he is back on the jobs page, live, an operator by his organisation
    page.wait_for_url(monitor.url + "/jobs")
    page.wait_for_selector("#conn.conn-live")
    page.wait_for_selector("#auth-state:has-text('logged in (operator)')")
    assert page.evaluate("document.body.classList.contains('can-control')")
    wait_for(lambda: any(e["target"] == "github:octo@acme.test" and e["outcome"] == "ok" for e in trail(monitor)),
             10, what="his login in the audit trail")  # (the monitor's writer adds it)
