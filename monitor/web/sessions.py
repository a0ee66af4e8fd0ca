"""Login sessions: a signed, expiring cookie that names who logged in.

The cookie holds ``{"s": subject, "r": role, "t": tenant, "k": key id}`` signed with
itsdangerous (HMAC-SHA1 over the payload and its time stamp) and is refused once older than
``JOBQUEUE_MONITOR_SESSION_SECONDS``. It is ``HttpOnly`` (no script reads it), ``SameSite=Lax``
(no cross-site POST carries it) and ``Secure`` when the request came over TLS (directly or,
per ``X-Forwarded-Proto``, through a reverse proxy). A session opened with an API key is
checked against the key on every request, so revoking the key ends it at once; a session opened with
the token or basic auth holds a fingerprint of them and ends when they change, and a single
sign-on session (:mod:`monitor.web.sso`) one of the single sign-on policy. The signing key
defaults to one derived from the token, basic-auth and single sign-on client secrets.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from typing import Any, Literal

from flask import Flask, Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from jobqueue.config import Settings
from monitor.web.prefix import cookie_path

#: The session cookie's name.
COOKIE = "jobqueue_session"
#: Where an app keeps its serializer.
EXTENSION = "jobqueue_sessions"
_SALT = "jobqueue-monitor-session"


def signing_key(settings: Settings) -> str:
    """The configured session secret, else one derived from the credentials, else random."""
    if settings.monitor_session_secret:
        return settings.monitor_session_secret
    if settings.monitor_token or settings.monitor_basic_auth or settings.monitor_sso_client_secret:
        material = f"jobqueue-session\0{settings.monitor_token}\0{settings.monitor_basic_auth}"
        if settings.monitor_sso_client_secret:  # single sign-on alone still signs the same everywhere
            material += f"\0{settings.monitor_sso_client_secret}"
        return hashlib.sha256(material.encode()).hexdigest()
    return secrets.token_hex(32)


def fingerprint(settings: Settings) -> str:
    """A short hash of the admin credentials: a token or basic-auth session holds it and ends
    when they change, even under a configured session secret."""
    material = f"jobqueue-credentials\0{settings.monitor_token}\0{settings.monitor_basic_auth}"
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def sso_fingerprint(settings: Settings) -> str:
    """A short hash of the single sign-on configuration (provider, client, who is let in with
    which role and tenant): a single sign-on session holds it and ends when any of it changes,
    so a narrowed policy logs out those it no longer lets in. Empty with single sign-on off."""
    if not settings.monitor_sso_provider:
        return ""
    parts = (settings.monitor_sso_provider, settings.monitor_sso_url, settings.monitor_sso_client_id,
             sorted(settings.monitor_sso_allowed_emails), sorted(settings.monitor_sso_allowed_domains),
             sorted(settings.monitor_sso_roles.items()), settings.monitor_sso_default_role,
             settings.monitor_sso_groups_claim, settings.monitor_sso_tenant_claim,
             sorted(settings.monitor_sso_tenants.items()))
    return hashlib.sha256(("jobqueue-sso\0" + repr(parts)).encode()).hexdigest()[:16]


def install(app: Flask, settings: Settings) -> None:
    """Give ``app`` its session serializer."""
    app.extensions[EXTENSION] = URLSafeTimedSerializer(signing_key(settings), salt=_SALT)


def read(app: Flask, cookies: Mapping[str, str], max_age: float) -> dict[str, Any] | None | Literal[False]:
    """The session in a request's ``cookies``: its payload, None without a cookie, False for a
    cookie that is forged, tampered with, malformed or expired."""
    raw = cookies.get(COOKIE)
    if not raw:
        return None
    try:
        payload = app.extensions[EXTENSION].loads(raw, max_age=max_age)
    except BadSignature:  # SignatureExpired is one
        return False
    if not isinstance(payload, dict) or not isinstance(payload.get("s"), str) or not isinstance(payload.get("r"), str):
        return False
    return payload


def is_secure(request: Request) -> bool:
    """True when the browser reached us over TLS (itself, or through a proxy that says so)."""
    return request.is_secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def open_session(app: Flask, request: Request, response: Response, payload: dict[str, Any], max_age: float) -> None:
    """Set the session cookie for ``payload`` on ``response``."""
    value = app.extensions[EXTENSION].dumps(payload)
    response.set_cookie(COOKIE, value, max_age=int(max_age), httponly=True, samesite="Lax",
                        secure=is_secure(request), path=cookie_path())


def close_session(request: Request, response: Response) -> None:
    """Clear the session cookie."""
    response.delete_cookie(COOKIE, path=cookie_path(), httponly=True, samesite="Lax", secure=is_secure(request))
