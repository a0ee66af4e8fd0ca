"""Single sign-on over real HTTP (issue 24, point 4): a real monitor process, a real OpenID
Connect provider (oidc-provider-mock behind a PKCE gate) and a fake of GitHub's OAuth2
endpoints, each on its own port; the browser's part is played by a requests session that
follows the redirects by hand. The Chromium tests are in test_sso_browser.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from jobqueue.up.embedded import free_port
from tests.helpers import wait_for
from tests.monitor.web import sso_providers
from tests.monitor.web.sso_providers import ADMIN, TOKEN, FakeGitHub, GitHubUser

provider = sso_providers.provider
oidc_monitor = sso_providers.oidc_monitor

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]  # the mock provider uses old Authlib APIs

def begin(monitor: Any, next_page: str = "/") -> tuple[requests.Session, str]:
    """A browser-like session that clicked "log in with single sign-on": (session, the
    provider's authorization URL)."""
    browser = requests.Session()
    res = browser.get(f"{monitor.url}/login/sso", params={"next": next_page}, allow_redirects=False, timeout=10)
    assert res.status_code == 302, res.text
    return browser, res.headers["Location"]


def authorize(browser: requests.Session, auth_url: str, sub: str) -> str:
    """The user ``sub`` approves at the provider: the callback URL it sends the browser to."""
    res = browser.post(auth_url, data={"sub": sub}, allow_redirects=False, timeout=10)
    assert res.status_code == 302, res.text
    return str(res.headers["Location"])


def sso_login(monitor: Any, sub: str, next_page: str = "/", **headers: str) -> tuple[requests.Session, requests.Response]:
    browser, auth_url = begin(monitor, next_page)
    callback = authorize(browser, auth_url, sub)
    return browser, browser.get(callback, allow_redirects=False, timeout=10, headers=headers)


def audit(monitor: Any) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = requests.get(f"{monitor.url}/api/audit", headers=ADMIN, timeout=10).json()["entries"]
    return entries


def test_a_permitted_oidc_user_gets_a_session_with_pkce_nonce_and_the_mapped_role_and_tenant(oidc_monitor, provider):
    # Given a monitor with OIDC single sign-on
    monitor = oidc_monitor()
    # When alice starts a login from /jobs
    browser, auth_url = begin(monitor, "/jobs")
    query = parse_qs(urlsplit(auth_url).query)
    # Then the provider is asked for a code with PKCE S256, a state and a nonce
    assert query["response_type"] == ["code"] and query["code_challenge_method"] == ["S256"]
    assert query["state"][0] and query["nonce"][0] and "openid" in query["scope"][0].split()
    # When she approves at the provider
    res = browser.get(authorize(browser, auth_url, "alice"), allow_redirects=False, timeout=10)
    # Then she is sent back to /jobs with a session (the provider checked the PKCE verifier)
    assert res.status_code == 302 and res.headers["Location"] == "/jobs"
    assert res.headers["Cache-Control"] == "no-store"  # the one-time code's page is never cached
    assert provider.gate.verified
    cookie = next(c for c in browser.cookies if c.name == "jobqueue_session")
    assert cookie.has_nonstandard_attr("HttpOnly") and cookie.expires and not cookie.secure
    assert "samesite=lax" in res.headers["Set-Cookie"].lower()
    # And she is a viewer of tenant acme-default: she reads the fleet, she may not act
    who = browser.get(f"{monitor.url}/api/auth", timeout=10).json()
    assert who["subject"] == "oidc:alice@acme.test" and who["role"] == "viewer" and who["tenant"] == "acme-default"
    assert browser.get(f"{monitor.url}/api/jobs", timeout=10).status_code == 200
    refused = browser.post(f"{monitor.url}/api/jobs", json={"service": "simulation"}, timeout=10)
    assert refused.status_code == 403
    # And a member of fleet-admins with a tenant claim is admin of that tenant
    root, res = sso_login(monitor, "root")
    assert res.status_code == 302
    who = root.get(f"{monitor.url}/api/auth", timeout=10).json()
    assert who["role"] == "admin" and who["tenant"] == "acme"
    # And the tenant rules hold her to it: she may not submit for another tenant
    other = root.post(f"{monitor.url}/api/jobs", json={"service": "simulation", "tenant": "beta"}, timeout=10)
    assert other.status_code == 403 and "acme" in other.json()["error"]["message"]
    # And both logins are in the audit trail (written by the monitor's writer, so polled)
    wanted = {("login", "ok", "oidc:alice@acme.test"), ("login", "ok", "oidc:root@acme.test")}
    wait_for(lambda: wanted <= {(e["action"], e["outcome"], e["target"]) for e in audit(monitor)}, 10,
             what="both logins in the audit trail")


def test_users_of_another_domain_or_with_an_unverified_email_are_refused_and_audited(oidc_monitor):
    # Given a monitor that lets acme.test in
    monitor = oidc_monitor()
    for sub in ("bob", "eve"):
        # When a user of another domain, or one whose acme email is unverified, logs in
        browser, res = sso_login(monitor, sub)
        # Then the login page says no (403), and no session is opened
        assert res.status_code == 403 and ("may not log in" in res.text or "no verified email" in res.text)
        assert "jobqueue_session" not in browser.cookies
        assert browser.get(f"{monitor.url}/api/jobs", timeout=10).status_code == 401
    # And the refusal of bob is audited with who he is
    def bob_refused() -> bool:
        refused = [e for e in audit(monitor) if e["action"] == "login" and e["outcome"] == "refused"]
        return any(e["target"] == "oidc:bob@other.test" and "may not log in" in e["detail"] for e in refused)

    wait_for(bob_refused, 10, what="bob's refusal in the audit trail")


def test_a_callback_without_its_state_a_forged_code_or_a_replay_opens_nothing(oidc_monitor):
    # Given a monitor with single sign-on, and a login approved at the provider
    monitor = oidc_monitor()
    browser, auth_url = begin(monitor)
    callback = authorize(browser, auth_url, "alice")
    # When the callback arrives in another browser (login CSRF), it is refused
    assert requests.get(callback, allow_redirects=False, timeout=10).status_code == 400
    # When the state is altered, it is refused
    bad_state = callback.replace("state=", "state=x")
    assert browser.get(bad_state, allow_redirects=False, timeout=10).status_code == 400
    # When the code is forged, the provider refuses it
    browser2, auth_url2 = begin(monitor)
    forged = authorize(browser2, auth_url2, "alice")
    forged = forged.replace("code=", "code=forged")
    assert browser2.get(forged, allow_redirects=False, timeout=10).status_code == 400
    # When the provider says the user denied the login, it is refused
    browser3, auth_url3 = begin(monitor)
    state = parse_qs(urlsplit(auth_url3).query)["state"][0]
    denied = browser3.get(f"{monitor.url}/auth/callback", params={"error": "access_denied", "state": state},
                          allow_redirects=False, timeout=10)
    assert denied.status_code == 403 and "access_denied" in denied.text
    # And a good callback used once cannot be replayed
    browser4, res = sso_login(monitor, "alice")
    assert res.status_code == 302
    replay = browser4.get(res.request.url, allow_redirects=False, timeout=10)
    assert replay.status_code == 400
    # And none of these opened a session
    for session in (browser, browser2, browser3):
        assert "jobqueue_session" not in session.cookies


def test_next_stays_on_the_monitor_and_cookies_are_secure_behind_tls(oidc_monitor):
    # Given a monitor with single sign-on
    monitor = oidc_monitor()
    # When a login is started with a next page on another site, and comes back through a TLS proxy
    browser, res = sso_login(monitor, "alice", "//evil.example/x", **{"X-Forwarded-Proto": "https"})
    # Then the browser stays on the monitor, and the session cookie is Secure
    assert res.status_code == 302 and res.headers["Location"] == "/"
    assert "secure" in [part.strip().lower() for part in res.headers["Set-Cookie"].split(";")]


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    fake = FakeGitHub()
    fake.users["octo"] = GitHubUser("octo", [
        {"email": "octo@users.noreply.github.test", "primary": False, "verified": True, "visibility": None},
        {"email": "octo@acme.test", "primary": True, "verified": True, "visibility": "private"}], orgs=["acme-ops"])
    fake.users["mallory"] = GitHubUser("mallory", [
        {"email": "mallory@evil.test", "primary": True, "verified": True, "visibility": "private"},
        {"email": "ceo@acme.test", "primary": False, "verified": False, "visibility": None}])
    yield fake
    fake.stop()


def test_github_logs_in_through_the_same_code_with_orgs_as_groups(start_monitor, github):
    # Given a monitor whose single sign-on is GitHub (Enterprise layout at the fake's URL)
    port = free_port()
    github.redirect_uri = f"http://127.0.0.1:{port}/auth/callback"
    monitor = start_monitor(port=port, MONITOR_TOKEN=TOKEN, MONITOR_SSO_PROVIDER="github", MONITOR_SSO_URL=github.url,
                            MONITOR_SSO_CLIENT_ID=github.client_id, MONITOR_SSO_CLIENT_SECRET=github.client_secret,
                            MONITOR_SSO_ALLOWED_DOMAINS="acme.test", MONITOR_SSO_ROLES="acme-ops=operator")
    # When octo (primary email at acme.test, member of acme-ops) logs in
    github.signed_in = "octo"
    browser, auth_url = begin(monitor)
    query = parse_qs(urlsplit(auth_url).query)
    assert query["code_challenge_method"] == ["S256"] and "read:org" in query["scope"][0].split()
    res = browser.get(authorize(browser, auth_url, "octo"), allow_redirects=False, timeout=10)
    # Then the session is his, operator by his org, and the secret went in the body
    assert res.status_code == 302, res.text
    who = browser.get(f"{monitor.url}/api/auth", timeout=10).json()
    assert who["subject"] == "github:octo@acme.test" and who["role"] == "operator"
    assert github.token_requests[-1]["client_secret"] == github.client_secret
    # When mallory, whose acme.test address is unverified, logs in
    github.signed_in = "mallory"
    browser, res = sso_login(monitor, "mallory")
    # Then she is refused
    assert res.status_code == 403 and "mallory@evil.test may not log in" in res.text
    assert "jobqueue_session" not in browser.cookies
