"""The login page, login and logout.

``GET /login`` shows a form for the token, an API key or ``user:password`` (basic auth); its
script posts ``{"credential": ...}`` as JSON to ``POST /login``, which answers with a signed
session cookie (:mod:`monitor.web.sessions`) and sends the browser on to ``next``. Being JSON,
the login goes through the same cross-site and body checks as every control
(:mod:`monitor.web.guard`). A login link ``/#token=...`` (``jobqueue up`` prints one) reaches
this page through the redirect with its fragment, and logs in by itself. Logins, refused ones
included, are audited and rate limited per address. With single sign-on configured the page
also shows its "Log in with ..." button (:mod:`monitor.web.sso`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from flask import Blueprint, current_app, g, jsonify, render_template, request

from jobqueue.config import Settings
from monitor.web import sessions
from monitor.web.access import auth_configured, current_identity
from monitor.web.auth import from_secret
from monitor.web.prefix import base_path
from monitor.web.routes import Limit, Role, route
from monitor.web.schemas import AUTH_INFO, LOGIN_REPLY, LOGIN_REQUEST, OK

bp = Blueprint("login", __name__)


def safe_next(target: str | None) -> str:
    """``target`` when it is a path of this site (no scheme, host or ``//``), else ``/``."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def sso_buttons(settings: Settings, next_page: str) -> list[dict[str, str]]:
    """The login page's single sign-on button(s): label and ``/login/sso`` link."""
    if not settings.monitor_sso_provider:
        return []
    name = settings.monitor_sso_name or {"github": "GitHub"}.get(settings.monitor_sso_provider, "single sign-on")
    return [{"name": name, "url": base_path() + "/login/sso?next=" + quote(next_page, safe="/")}]


@route(bp, "/login", role=Role.PUBLIC, summary="The login page", content="text/html")
def login_page() -> str:
    """The login form (the page's script posts to ``POST /login``) and the single sign-on button."""
    next_page = safe_next(request.args.get("next"))
    return render_template("login.html", page="login", next=next_page,
                           sso_providers=sso_buttons(current_app.extensions["jobqueue_monitor"].settings, next_page))


@route(bp, "/login", method="POST", role=Role.PUBLIC, summary="Log in: a session cookie for a token, key or user:password",
       body=LOGIN_REQUEST, response=LOGIN_REPLY, errors=(400, 401), limit=Limit.LOGIN, audit="login")
def login() -> Any:
    """Check the credential; 200 with a session cookie, or 401 (audited either way)."""
    from monitor.web.responses import error_response

    body = request.get_json(silent=True)
    secret = body.get("credential") if isinstance(body, dict) else None
    if not isinstance(secret, str) or not secret.strip() or len(secret) > 1000:
        return error_response(400, "bad_request", "send {\"credential\": \"<token, API key or user:password>\"}")
    ctx = current_app.extensions["jobqueue_monitor"]
    identity = from_secret(ctx.settings, ctx.store, secret)
    if identity is None:
        return error_response(401, "unauthorized", "wrong, revoked or expired credential")
    g.jobqueue_identity = identity
    g.jobqueue_audit_target = identity.subject
    response = jsonify({"ok": True, "subject": identity.subject, "role": identity.role.value,
                        "tenant": identity.tenant})
    payload = {**identity.session_payload(), "f": sessions.fingerprint(ctx.settings)}
    sessions.open_session(current_app, request, response, payload, ctx.settings.monitor_session_seconds)
    return response


@route(bp, "/logout", method="POST", role=Role.PUBLIC, summary="Log out: the session cookie is cleared",
       body={"type": "object"}, response=OK, audit="logout")
def logout() -> Any:
    """Clear the session cookie (the page then goes to ``/login``)."""
    current_identity()
    response = jsonify({"ok": True})
    sessions.close_session(request, response)
    return response


@route(bp, "/api/auth", role=Role.PUBLIC, summary="Whether login is needed, and who this request is",
       response=AUTH_INFO)
def auth_info() -> Any:
    """What the pages need to show or hide controls: ``auth_required``, ``read_only``,
    ``authenticated`` (this request may act: operator or admin), and its ``role``,
    ``subject`` and ``tenant``. Never a 401 itself."""
    settings = current_app.extensions["jobqueue_monitor"].settings
    identity = current_identity()
    can_act = identity.role.allows(Role.OPERATOR) and not settings.monitor_read_only
    return jsonify({
        "auth_required": auth_configured(),
        "read_only": bool(settings.monitor_read_only),
        "authenticated": can_act,
        "role": identity.role.value,
        "subject": identity.subject,
        "tenant": identity.tenant,
        "session": identity.via == "cookie",
    })
