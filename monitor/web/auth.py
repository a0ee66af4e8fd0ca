"""Who is asking: a request's credentials turned into an :class:`Identity`.

Credentials are the admin's bearer token (``JOBQUEUE_MONITOR_TOKEN``) or basic-auth pair
(``JOBQUEUE_MONITOR_BASIC_AUTH``), API keys (``Authorization: Bearer jq_...``, see
:mod:`monitor.store.access`), the metrics token (``/metrics`` only) and the login session
cookie (:mod:`monitor.web.sessions`). What each identity may do is decided by
:mod:`monitor.web.access` from the routes' declared roles. With no credentials configured at
all (no token, no basic auth, no API key) the monitor only binds to localhost
(:func:`monitor.server.check_bind`) and only loopback clients may act.
"""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass
from typing import Any

from jobqueue.config import Settings
from monitor.store import Store
from monitor.store.access import active_key, check_key
from monitor.web.routes import Role

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def has_credentials(settings: Settings) -> bool:
    """True when a token, basic-auth credentials or single sign-on are configured."""
    return bool(settings.monitor_token or settings.monitor_basic_auth or settings.monitor_sso_provider)


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


@dataclass(frozen=True)
class Identity:
    """Who a request acts as. ``kind``: ``token``, ``basic``, ``key`` (credentials), ``sso``
    (a single sign-on user, ``oidc:<email>`` or ``github:<email>``), ``local``
    (a loopback client of a monitor without credentials), ``anonymous``, or ``scrape`` (the
    metrics token). ``subject`` names it in the audit trail (``key:<id>``, ``basic:<user>``...);
    ``tenant`` is the key's tenant (None: all); ``via`` says how it was presented."""

    subject: str
    role: Role
    kind: str
    tenant: str | None = None
    key_id: str | None = None
    via: str = "header"

    @property
    def logged_in(self) -> bool:
        """True for an identity proven by credentials (not anonymous, local or a scraper)."""
        return self.kind in ("token", "basic", "key", "sso")

    def session_payload(self) -> dict[str, Any]:
        """What a session cookie of this identity holds."""
        return {"s": self.subject, "r": self.role.value, "t": self.tenant, "k": self.key_id, "x": self.kind}


ANONYMOUS = Identity("anonymous", Role.PUBLIC, "anonymous", via="none")


class BadCredentials(Exception):
    """Credentials were presented and are wrong, revoked, expired or forged. ``guess``: they
    count against the address's login rate limit (a header's; a stale cookie's do not)."""

    def __init__(self, message: str, guess: bool = True) -> None:
        super().__init__(message)
        self.guess = guess


def _basic(settings: Settings, value: str) -> Identity | None:
    if not settings.monitor_basic_auth:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (ValueError, TypeError):
        return None
    if hmac.compare_digest(decoded, settings.monitor_basic_auth.encode()):
        user = settings.monitor_basic_auth.partition(":")[0]
        return Identity(f"basic:{user}", Role.ADMIN, "basic")
    return None


def _bearer(settings: Settings, store: Store, value: str) -> Identity | None:
    value = value.strip()
    if settings.monitor_token and hmac.compare_digest(value.encode(), settings.monitor_token.encode()):
        return Identity("token", Role.ADMIN, "token")
    if value.startswith("jq_"):
        key = check_key(store, value)
        if key is not None:
            return Identity(f"key:{key.id}", Role(key.role), "key", tenant=key.tenant, key_id=key.id)
        return None
    if settings.monitor_metrics_token and hmac.compare_digest(value.encode(), settings.monitor_metrics_token.encode()):
        return Identity("metrics-token", Role.VIEWER, "scrape")
    return None


def from_secret(settings: Settings, store: Store, secret: str) -> Identity | None:
    """The identity of a secret typed into the login form: the token, an API key, or
    ``user:password`` of basic auth (the metrics token opens no session)."""
    secret = secret.strip()
    found = _bearer(settings, store, secret)
    if found is None and ":" in secret:
        found = _basic(settings, base64.b64encode(secret.encode()).decode())
    return found if found is not None and found.kind != "scrape" else None


def from_header(settings: Settings, store: Store, header: str) -> Identity | None:
    """The identity of an ``Authorization`` header; None without one. Raises
    :class:`BadCredentials` for one that does not check out."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    found = None
    if scheme.lower() == "bearer":
        found = _bearer(settings, store, value)
    elif scheme.lower() == "basic":
        found = _basic(settings, value)
    if found is None:
        raise BadCredentials("missing or wrong credentials")
    return found


def from_session(store: Store, payload: dict[str, Any], credentials: str, sso: str = "") -> Identity:
    """The identity of a verified session cookie's payload; a key's session is checked
    against the key, a token or basic-auth session against the ``credentials`` fingerprint
    (:func:`monitor.web.sessions.fingerprint`), a single sign-on session against the ``sso``
    one (:func:`monitor.web.sessions.sso_fingerprint`); else :class:`BadCredentials`."""
    try:
        role = Role(payload["r"])
    except ValueError:
        raise BadCredentials("bad session", guess=False) from None
    kind = str(payload.get("x")) if payload.get("x") in ("token", "basic", "key", "sso") else "token"
    key_id = payload.get("k")
    if kind == "key":
        key = active_key(store, str(key_id)) if isinstance(key_id, str) else None
        if key is None:
            raise BadCredentials("the session's API key is revoked or expired", guess=False)
        return Identity(f"key:{key.id}", Role(key.role), "key", tenant=key.tenant, key_id=key.id, via="cookie")
    if kind == "sso":
        if not sso or payload.get("f") != sso:
            raise BadCredentials("single sign-on changed or is off: log in again", guess=False)
        tenant = payload.get("t") if isinstance(payload.get("t"), str) else None
        return Identity(str(payload["s"]), role, "sso", tenant=tenant, via="cookie")
    if payload.get("f") != credentials:
        raise BadCredentials("the credentials of this session changed", guess=False)
    return Identity(str(payload["s"]), role, kind, via="cookie")
