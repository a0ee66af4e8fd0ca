"""Identity providers for the single sign-on tests, each a real HTTP server on a free port.

* :class:`OidcProvider`: the ``oidc-provider-mock`` package (a real OpenID Connect provider
  built on Authlib: discovery, JWKS, RS256 ID tokens, nonce, client registration with checked
  redirect URIs and secrets), behind a gate that requires PKCE (S256) as Okta, Keycloak and
  Google do for public and confidential clients that send it; the mock itself ignores it.
* :class:`FakeGitHub`: GitHub's OAuth2 endpoints as GitHub answers them: the authorize page,
  ``/login/oauth/access_token`` (form-encoded unless JSON is asked for, errors as HTTP 200 with
  an ``error`` field, client credentials in the body only), and the API's ``/user``,
  ``/user/emails`` (with unverified addresses) and ``/user/orgs`` under ``/api/v3`` (GitHub
  Enterprise's layout), each refusing a missing or wrong token or scope.

Both are reached as ``http://localhost:<port>`` while the monitor is ``http://127.0.0.1:<port>``:
another site, so the browser treats the provider's redirect back as a cross-site navigation.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from flask import Flask, jsonify, redirect, request
from werkzeug.serving import make_server

from jobqueue.up.embedded import free_port

#: The admin token of the single sign-on tests' monitors.
TOKEN = "sso-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


class Served:
    """A WSGI app on a free loopback port, served from a thread until :meth:`stop`."""

    def __init__(self, app: Any) -> None:
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://localhost:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


class PkceGate:
    """WSGI middleware: an authorization request must carry an S256 ``code_challenge``, and
    the code it yields is exchanged only with the matching ``code_verifier``."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.challenges: dict[str, str] = {}
        self.verified: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
        if path == "/oauth2/authorize":
            query = parse_qs(environ.get("QUERY_STRING", ""))
            challenge = query.get("code_challenge", [""])[0]
            if query.get("code_challenge_method", [""])[0] != "S256" or not challenge:
                return _json_error(start_response, "invalid_request", "PKCE (S256) is required")
            if method == "POST":
                return self.app(environ, self._capture(start_response, challenge))
        if path == "/oauth2/token" and method == "POST":
            size = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(size)
            environ["wsgi.input"] = BytesIO(body)
            form = parse_qs(body.decode())
            code = form.get("code", [""])[0]
            expected = self.challenges.pop(code, None)
            verifier = form.get("code_verifier", [""])[0]
            if expected is not None and s256(verifier) != expected:
                return _json_error(start_response, "invalid_grant", "PKCE verification failed")
            if expected is not None:
                self.verified.append(code)
        return self.app(environ, start_response)

    def _capture(self, start_response: Callable[..., Any], challenge: str) -> Callable[..., Any]:
        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            location = dict(headers).get("Location", "")
            code = parse_qs(urlsplit(location).query).get("code", [""])[0]
            if code:
                self.challenges[code] = challenge
            return start_response(status, headers, exc_info)

        return capture


def _json_error(start_response: Callable[..., Any], error: str, description: str) -> list[bytes]:
    start_response("400 Bad Request", [("Content-Type", "application/json")])
    return [f'{{"error": "{error}", "error_description": "{description}"}}'.encode()]


class OidcProvider:
    """oidc-provider-mock behind :class:`PkceGate`, with nonces required and clients registered."""

    def __init__(self) -> None:
        with warnings.catch_warnings():  # it imports Authlib's deprecated modules
            import authlib.deprecate  # noqa: F401  (its import sets an "always" filter; ours goes first)

            warnings.simplefilter("ignore", DeprecationWarning)
            import oidc_provider_mock

        self.gate = PkceGate(oidc_provider_mock.app(require_client_registration=True, require_nonce=True))
        self._served = Served(self.gate)
        self.url = self._served.url

    def register(self, redirect_uri: str) -> tuple[str, str]:
        """A client for ``redirect_uri``: (client id, secret)."""
        res = requests.post(f"{self.url}/oauth2/clients", json={"redirect_uris": [redirect_uri]}, timeout=10)
        assert res.status_code == 201, res.text
        return res.json()["client_id"], res.json()["client_secret"]

    def add_user(self, sub: str, **claims: Any) -> None:
        res = requests.put(f"{self.url}/users/{sub}", json=claims, timeout=10)
        assert res.status_code == 204, res.text

    def stop(self) -> None:
        self._served.stop()


@dataclass
class GitHubUser:
    login: str
    emails: list[dict[str, Any]]
    orgs: list[str] = field(default_factory=list)


class FakeGitHub:
    """GitHub's OAuth2 endpoints and the three API routes the monitor reads."""

    def __init__(self, client_id: str = "Iv1.fakeclient", client_secret: str = "fake-github-secret") -> None:
        self.client_id, self.client_secret = client_id, client_secret
        self.users: dict[str, GitHubUser] = {}
        self.signed_in = ""  # who is logged in to GitHub in "the browser"
        self.codes: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, tuple[str, set[str]]] = {}
        self.redirect_uri = ""
        self.token_requests: list[dict[str, str]] = []
        self._served = Served(self._app())
        self.url = self._served.url

    def _app(self) -> Flask:
        app = Flask("fake_github")
        app.add_url_rule("/login/oauth/authorize", "authorize", self._authorize, methods=["GET", "POST"])
        app.add_url_rule("/login/oauth/access_token", "token", self._token, methods=["POST"])
        app.add_url_rule("/api/v3/user", "user", lambda: self._api("user"))
        app.add_url_rule("/api/v3/user/emails", "emails", lambda: self._api("emails"))
        app.add_url_rule("/api/v3/user/orgs", "orgs", lambda: self._api("orgs"))
        return app

    def _authorize(self) -> Any:
        args = request.args
        if args.get("client_id") != self.client_id:
            return "<h1>404: unknown application</h1>", 404
        if self.redirect_uri and args.get("redirect_uri") != self.redirect_uri:
            return redirect(f"{self.redirect_uri}?error=redirect_uri_mismatch&state={args.get('state', '')}")
        if request.method == "GET":
            return (f"<html><body><h1>Authorize jobqueue</h1><p>as {self.signed_in}</p>"
                    "<form method='post'><button id='js-oauth-authorize-btn' type='submit'>Authorize</button>"
                    "</form></body></html>")
        code = secrets.token_hex(10)
        self.codes[code] = {"login": self.signed_in, "scope": set(args.get("scope", "").split()),
                            "redirect_uri": args.get("redirect_uri"), "challenge": args.get("code_challenge"),
                            "method": args.get("code_challenge_method")}
        return redirect(f"{args['redirect_uri']}?{urlencode({'code': code, 'state': args.get('state', '')})}")

    def _token(self) -> Any:
        form = request.form
        self.token_requests.append(dict(form))
        grant = self.codes.pop(form.get("code", ""), None)
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            answer = {"error": "incorrect_client_credentials", "error_description": "The client_id and/or client_secret passed are incorrect."}
        elif grant is None:
            answer = {"error": "bad_verification_code", "error_description": "The code passed is incorrect or expired."}
        elif form.get("redirect_uri") and form.get("redirect_uri") != grant["redirect_uri"]:
            answer = {"error": "redirect_uri_mismatch", "error_description": "The redirect_uri MUST match."}
        elif grant["challenge"] and (grant["method"] != "S256" or s256(form.get("code_verifier", "")) != grant["challenge"]):
            answer = {"error": "bad_verification_code", "error_description": "PKCE verification failed."}
        else:
            token = "gho_" + secrets.token_hex(16)
            self.tokens[token] = (grant["login"], grant["scope"])
            answer = {"access_token": token, "token_type": "bearer", "scope": ",".join(sorted(grant["scope"]))}
        if "application/json" in request.headers.get("Accept", ""):
            return jsonify(answer)  # HTTP 200 even for errors, as GitHub does
        return urlencode(answer), 200, {"Content-Type": "application/x-www-form-urlencoded"}

    def _api(self, what: str) -> Any:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        found = self.tokens.get(token) if scheme.lower() in ("bearer", "token") else None
        if found is None:
            return jsonify({"message": "Requires authentication"}), 401
        user, scope = self.users[found[0]], found[1]
        if what == "user":
            return jsonify({"login": user.login, "id": abs(hash(user.login)) % 10**8, "name": user.login.title(),
                            "email": None})
        if what == "emails":
            if "user:email" not in scope:
                return jsonify({"message": "Not Found"}), 404
            return jsonify(user.emails)
        if "read:org" not in scope:
            return jsonify([])  # without the scope only public memberships show; ours are private
        return jsonify([{"login": org, "id": i} for i, org in enumerate(user.orgs)])

    def stop(self) -> None:
        self._served.stop()


# -- fixtures (import them into a test module: ``provider = sso_providers.provider``) --------


@pytest.fixture
def provider() -> Iterator[OidcProvider]:
    started = OidcProvider()
    started.add_user("alice", email="alice@acme.test", email_verified=True, groups=["staff"])
    started.add_user("root", email="root@acme.test", email_verified=True, groups=["staff", "fleet-admins"],
                     tenant="acme")
    started.add_user("bob", email="bob@other.test", email_verified=True, groups=["staff"])
    started.add_user("eve", email="eve@acme.test", email_verified=False)
    yield started
    started.stop()


@pytest.fixture
def oidc_monitor(start_monitor: Any, provider: OidcProvider) -> Any:
    """A monitor whose single sign-on is ``provider``: acme.test may log in (viewer), the
    fleet-admins group is admin, acme.test users are tenant acme-default."""

    def start(**env: str) -> Any:
        port = free_port()
        client_id, secret = provider.register(f"http://127.0.0.1:{port}/auth/callback")
        values = {"MONITOR_TOKEN": TOKEN, "MONITOR_SSO_PROVIDER": "oidc", "MONITOR_SSO_URL": provider.url,
                  "MONITOR_SSO_CLIENT_ID": client_id, "MONITOR_SSO_CLIENT_SECRET": secret,
                  "MONITOR_SSO_ALLOWED_DOMAINS": "acme.test", "MONITOR_SSO_ROLES": "fleet-admins=admin",
                  "MONITOR_SSO_TENANT_CLAIM": "tenant", "MONITOR_SSO_TENANTS": "@acme.test=acme-default"}
        values.update(env)
        return start_monitor(port=port, **values)

    return start
