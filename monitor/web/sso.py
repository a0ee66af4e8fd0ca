"""Single sign-on routes: ``GET /login/sso`` sends the browser to the identity provider,
``GET /auth/callback`` takes its answer and opens the same signed session cookie as the login
form (:mod:`monitor.web.sessions`), or shows the login page with why not.

The flow is the authorization code flow with PKCE (:mod:`monitor.web.sso_client`): the
``state``, PKCE verifier, OIDC ``nonce`` and the page to go back to travel in a short-lived
signed cookie (``HttpOnly``, ``SameSite=Lax`` so the provider's redirect carries it back,
``Secure`` behind TLS, path ``/auth``) that the callback consumes whatever happens, so a
callback is good once and only in the browser that started it (no login CSRF). Who is let in,
with which role and tenant, is :func:`monitor.web.sso_policy.admit`'s decision. A login and a
refused one are audited as ``login`` (target ``<kind>:<email>``); both routes are under the
login rate limit. With single sign-on off both answer 404.
"""

from __future__ import annotations

import hmac
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, redirect, render_template, request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from jobqueue.config import Settings
from monitor.web import sessions
from monitor.web.auth import Identity
from monitor.web.login import safe_next, sso_buttons
from monitor.web.prefix import base_path, cookie_path
from monitor.web.routes import Limit, Role, route
from monitor.web.schemas import str_query
from monitor.web.sso_client import ProviderError, authorization, build, exchange, profile
from monitor.web.sso_policy import SsoRefused, admit

bp = Blueprint("sso", __name__)

#: The cookie that carries a started login's state to the callback.
STATE_COOKIE = "jobqueue_sso"
#: Seconds a started login stays good (the user's time at the provider).
STATE_SECONDS = 600
#: Where an app keeps its provider client and state signer.
EXTENSION = "jobqueue_sso"
#: Longest ``code`` or ``state`` the callback reads (providers' are well under 1 kB).
MAX_PARAM = 4096
_SALT = "jobqueue-sso-state"


def install(app: Flask, settings: Settings) -> None:
    """Give ``app`` its provider client (when single sign-on is on) and state signer."""
    app.extensions[EXTENSION] = {
        "client": build(settings) if settings.monitor_sso_provider else None,
        "signer": URLSafeTimedSerializer(sessions.signing_key(settings), salt=_SALT),
    }


def _settings() -> Settings:
    settings: Settings = current_app.extensions["jobqueue_monitor"].settings
    return settings


def _redirect_uri(settings: Settings) -> str:
    if settings.monitor_sso_redirect_url:
        return settings.monitor_sso_redirect_url
    scheme = "https" if sessions.is_secure(request) else "http"
    return f"{scheme}://{request.host}{base_path()}/auth/callback"


def _page(status: int, message: str, next_page: str = "/") -> Response:
    """The login page with ``message``: what a refused or broken single sign-on shows."""
    html = render_template("login.html", page="login", next=next_page, sso_providers=sso_buttons(_settings(), next_page),
                           sso_error=message)
    response = Response(html, status=status, mimetype="text/html", headers={"Cache-Control": "no-store"})
    if request.cookies.get(STATE_COOKIE):
        response.delete_cookie(STATE_COOKIE, path=cookie_path("/auth"), httponly=True, samesite="Lax",
                               secure=sessions.is_secure(request))
    return response


@route(bp, "/login/sso", role=Role.PUBLIC, summary="Single sign-on: the browser goes to the identity provider",
       content="text/html", status=302, query=(str_query("next"),), errors=(404, 503), limit=Limit.LOGIN)
def start() -> Response:
    """Redirect to the provider's authorization page with a fresh state, PKCE challenge and
    nonce, remembered in the state cookie."""
    settings = _settings()
    entry = current_app.extensions[EXTENSION]
    next_page = safe_next(request.args.get("next"))
    if entry["client"] is None:
        return _page(404, "single sign-on is not configured on this monitor", next_page)
    redirect_uri = _redirect_uri(settings)
    try:
        found = authorization(entry["client"], settings, redirect_uri)
    except ProviderError as exc:
        return _page(exc.status, exc.message, next_page)
    state = entry["signer"].dumps({"state": found["state"], "verifier": found.get("code_verifier", ""),
                                   "nonce": found.get("nonce", ""), "next": next_page, "redirect": redirect_uri})
    response: Response = redirect(found["url"], code=302)  # type: ignore[assignment]
    response.headers["Cache-Control"] = "no-store"
    response.set_cookie(STATE_COOKIE, state, max_age=STATE_SECONDS, httponly=True, samesite="Lax",
                        secure=sessions.is_secure(request), path=cookie_path("/auth"))
    return response


def _started() -> dict[str, Any] | None:
    """The state cookie of the login this browser started (None: none, forged or too old)."""
    raw = request.cookies.get(STATE_COOKIE)
    if not raw:
        return None
    try:
        data = current_app.extensions[EXTENSION]["signer"].loads(raw, max_age=STATE_SECONDS)
    except BadSignature:
        return None
    return data if isinstance(data, dict) and isinstance(data.get("state"), str) else None


def _refuse(status: int, message: str, next_page: str = "/") -> Response:
    g.jobqueue_audit_detail = f"{_settings().monitor_sso_provider}: {message}"
    return _page(status, message, next_page)


@route(bp, "/auth/callback", role=Role.PUBLIC, summary="Single sign-on: the provider's answer opens a session, or is refused",
       content="text/html", status=302, errors=(400, 403, 404, 503), limit=Limit.LOGIN, audit="login",
       query=(str_query("code"), str_query("state"), str_query("error")))
def callback() -> Response:
    """Check the state, exchange the code (with the PKCE verifier), check the user against
    the policy; a session cookie and a redirect to the page the login started from, or the
    login page with the reason (400, 403, 503)."""
    settings = _settings()
    client = current_app.extensions[EXTENSION]["client"]
    if client is None:
        return _page(404, "single sign-on is not configured on this monitor")
    started = _started()
    state, code = request.args.get("state", ""), request.args.get("code", "")
    if started is None or not hmac.compare_digest(state.encode(), str(started["state"]).encode()):
        return _refuse(400, "this login did not start in this browser or took too long: log in again")
    next_page = safe_next(started.get("next"))
    if request.args.get("error"):
        return _refuse(403, f"the identity provider refused the login ({request.args['error'][:100]})", next_page)
    if not code or len(code) > MAX_PARAM:
        return _refuse(400, "the identity provider sent no login code", next_page)
    try:
        token = exchange(client, settings, str(started["redirect"]), code, str(started.get("verifier", "")))
        user = profile(client, settings, token, str(started.get("nonce", "")))
        admission = admit(settings, user)
    except ProviderError as exc:
        return _refuse(exc.status, exc.message, next_page)
    except SsoRefused as exc:
        g.jobqueue_audit_target = f"{settings.monitor_sso_provider}:{(user.emails or (user.subject,))[0]}"[:512]
        return _refuse(403, str(exc), next_page)
    identity = Identity(f"{settings.monitor_sso_provider}:{admission.subject}", admission.role, "sso",
                        tenant=admission.tenant, via="cookie")
    g.jobqueue_identity = identity
    g.jobqueue_audit_target = identity.subject
    response: Response = redirect(base_path() + next_page, code=302)  # type: ignore[assignment]
    response.headers["Cache-Control"] = "no-store"
    payload = {**identity.session_payload(), "f": sessions.sso_fingerprint(settings)}
    sessions.open_session(current_app, request, response, payload, settings.monitor_session_seconds)
    response.delete_cookie(STATE_COOKIE, path=cookie_path("/auth"), httponly=True, samesite="Lax", secure=sessions.is_secure(request))
    return response
