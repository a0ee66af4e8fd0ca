"""Single sign-on's routes on a monitor app (Flask's test client; the providers are real HTTP
servers): off means 404, a broken provider a clear 503, hostile callbacks never a 5xx, and a
changed policy ends the sessions it opened."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, jsonify

from jobqueue.config import Settings
from jobqueue.up.embedded import free_port
from monitor.app import create_app
from monitor.web import sessions
from tests.monitor.web import sso_providers
from tests.monitor.web.sso_providers import TOKEN, FakeGitHub, OidcProvider, Served

provider = sso_providers.provider

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning")]  # the mock provider's Authlib use


@pytest.fixture
def make_app(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., Any]]:
    apps: list[Any] = []

    def make(**values: Any) -> Any:
        values.setdefault("monitor_token", TOKEN)
        settings = Settings(monitor_db=f"sqlite:///{tmp_path / 'sso.db'}", broker_url=redis_url, **values).resolved()
        app = create_app(settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["jobqueue_monitor"].close()


def oidc(url: str, **values: Any) -> dict[str, Any]:
    return {"monitor_sso_provider": "oidc", "monitor_sso_url": url, "monitor_sso_client_id": "monitor",
            "monitor_sso_client_secret": "s3cret", "monitor_sso_allowed_domains": ("acme.test",), **values}


def test_with_single_sign_on_off_its_routes_answer_404_and_the_login_page_has_no_button(make_app):
    client = make_app().test_client()
    for path in ("/login/sso?next=/", "/auth/callback?code=x&state=y"):
        response = client.get(path)
        assert response.status_code == 404 and b"not configured" in response.data
    assert b"sso-login" not in client.get("/login").data


def test_a_provider_without_discovery_or_unreachable_is_a_clear_503(make_app):
    fake = FakeGitHub()  # a live server with no /.well-known/openid-configuration
    try:
        for url in (fake.url, f"http://127.0.0.1:{free_port()}"):
            client = make_app(**oidc(url)).test_client()
            response = client.get("/login/sso")
            assert response.status_code == 503, response.data
            assert b"discovery document is unavailable" in response.data
            assert "jobqueue_sso" not in response.headers.get("Set-Cookie", "")
    finally:
        fake.stop()


def test_a_discovery_document_of_another_issuer_is_refused(make_app):
    # Given a server whose discovery document names another issuer than the one configured
    impostor = Flask("impostor")
    impostor.add_url_rule("/.well-known/openid-configuration", "doc", lambda: jsonify(
        {"issuer": "https://accounts.example", "authorization_endpoint": "https://accounts.example/auth",
         "token_endpoint": "https://accounts.example/token", "jwks_uri": "https://accounts.example/jwks"}))
    served = Served(impostor)
    try:
        # Then no login starts through it
        response = make_app(**oidc(served.url)).test_client().get("/login/sso")
        assert response.status_code == 503 and b"names issuer" in response.data
    finally:
        served.stop()


#: Callback queries a scanner or an attacker sends.
HOSTILE = ["", "?code=x", "?state=x", "?code=x&state=x", "?error=access_denied", "?error=<script>alert(1)</script>&state=x",
           "?code=" + "A" * 5000 + "&state=x", "?code=%00&state=%00", "?code=\u202e&state=\u202e", "?state[]=1&code[]=2",
           "?code=x&code=y&state=x&state=y", "?error=" + "e" * 3000]


def test_hostile_callbacks_and_starts_get_no_5xx_and_open_no_session(make_app, provider: OidcProvider):
    # Given a monitor with single sign-on through a live provider
    client = make_app(**oidc(provider.url), monitor_rate_login="10000/minute").test_client()
    # When a login is started with hostile next pages, it stays on the monitor
    for target in ("//evil.example", "https://evil.example", "/\\evil.example", "javascript:alert(1)", "/ok", "x" * 3000):
        response = client.get("/login/sso", query_string={"next": target})
        assert response.status_code == 302, response.data
    # When hostile callbacks arrive, with or without a state cookie of a started login
    for started in (False, True):
        if started:
            client.get("/login/sso")
        for query in HOSTILE:
            response = client.get("/auth/callback" + query)
            # Then each is a 4xx with the login page, never a server error, and no session
            assert 400 <= response.status_code < 500, (query, response.status_code)
            assert b"<script>alert" not in response.data
            assert sessions.COOKIE not in response.headers.get("Set-Cookie", "")
    # And a forged state cookie is as good as none
    client.set_cookie("jobqueue_sso", "eyJzdGF0ZSI6IngifQ.forged.sig", path="/auth")
    assert client.get("/auth/callback?code=x&state=x").status_code == 400


def test_a_changed_single_sign_on_policy_ends_the_sessions_it_opened(make_app, provider: OidcProvider):
    # Given a single sign-on session signed by a monitor with one policy
    before = make_app(**oidc(provider.url), monitor_session_secret="shared")
    settings = before.extensions["jobqueue_monitor"].settings
    payload = {"s": "oidc:alice@acme.test", "r": "operator", "t": "acme", "k": None, "x": "sso",
               "f": sessions.sso_fingerprint(settings)}
    cookie = before.extensions[sessions.EXTENSION].dumps(payload)
    client = before.test_client()
    client.set_cookie(sessions.COOKIE, cookie)
    assert client.get("/api/auth").get_json()["subject"] == "oidc:alice@acme.test"
    assert client.get("/api/jobs").status_code == 200
    # When the monitor's policy narrows (same session secret), or single sign-on is turned off
    narrowed = make_app(**oidc(provider.url, monitor_sso_allowed_domains=(), monitor_sso_allowed_emails=("x@acme.test",)),
                        monitor_session_secret="shared")
    off = make_app(monitor_session_secret="shared")
    for app in (narrowed, off):
        other = app.test_client()
        other.set_cookie(sessions.COOKIE, cookie)
        # Then the cookie opens nothing
        assert other.get("/api/jobs").status_code == 401


class StubOidcClient:
    """Unit-test stand-in for Authlib's client: an ID token's claims and a userinfo answer."""

    def __init__(self, claims: dict[str, Any], info: dict[str, Any]) -> None:
        self.claims, self.info = claims, info
        self.server_metadata = {"userinfo_endpoint": "https://idp.example/userinfo"}
        self.userinfo_calls = 0

    def parse_id_token(self, token: dict[str, Any], nonce: str) -> dict[str, Any]:
        assert nonce == "n-1"
        return self.claims

    def userinfo(self, token: dict[str, Any]) -> dict[str, Any]:
        self.userinfo_calls += 1
        return self.info


def test_claims_missing_from_the_id_token_come_from_userinfo_of_the_same_subject_only():
    from monitor.web.sso_client import profile

    settings = Settings(**oidc("https://idp.example"))
    token = {"access_token": "a", "id_token": "t"}
    # An ID token without groups (GitLab's): userinfo of the same subject fills them in
    client = StubOidcClient({"sub": "1", "email": "a@acme.test", "email_verified": True},
                            {"sub": "1", "groups": ["acme/fleet"], "email": "other@evil.test"})
    found = profile(client, settings, token, "n-1")  # type: ignore[arg-type]
    assert found.groups == ("acme/fleet",) and found.emails == ("a@acme.test",)  # the ID token's email wins
    # Userinfo of another subject is ignored
    client = StubOidcClient({"sub": "1", "email": "a@acme.test"}, {"sub": "2", "groups": ["admins"]})
    assert profile(client, settings, token, "n-1").groups == ()  # type: ignore[arg-type]
    # An email the provider marks unverified is no email
    client = StubOidcClient({"sub": "1", "email": "a@acme.test", "email_verified": False, "groups": []}, {})
    assert profile(client, settings, token, "n-1").emails == ()  # type: ignore[arg-type]
    assert client.userinfo_calls == 0  # nothing was missing: userinfo is not asked


def test_single_sign_on_alone_turns_the_login_on_and_may_serve_beyond_localhost(make_app, provider: OidcProvider):
    from monitor.server import check_bind

    # Given a monitor whose only credential is single sign-on (no token, basic auth or key)
    app = make_app(**oidc(provider.url), monitor_token="")
    client = app.test_client()
    # Then every read needs a login, the login page offers single sign-on, and it may bind publicly
    assert client.get("/api/jobs").status_code == 401
    assert client.get("/").status_code == 302
    assert b'id="sso-login"' in client.get("/login").data
    assert client.get("/api/auth").get_json()["auth_required"] is True
    check_bind(app.extensions["jobqueue_monitor"].settings, "0.0.0.0")
