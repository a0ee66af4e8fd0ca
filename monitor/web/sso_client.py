"""The provider's side of single sign-on, through Authlib: the authorization URL (code flow
with PKCE S256, a ``state`` and, for OIDC, a ``nonce``), the code exchange, and the user's
:class:`~monitor.web.sso_policy.Profile`.

One code path for both kinds: an OIDC provider's endpoints come from its discovery document
(``<issuer>/.well-known/openid-configuration``, whose ``issuer`` must be the configured one)
and the user from the ID token (signature from the provider's JWKS, issuer, audience, expiry,
nonce) plus, for claims it lacks, the userinfo endpoint; GitHub (OAuth2, not OIDC) has fixed
endpoints (``/login/oauth/authorize``, ``/login/oauth/access_token``) and the user from its
API (``/user``, ``/user/emails``, ``/user/orgs`` as groups). Provider metadata and keys are
cached per app; a failed discovery is not.
"""

from __future__ import annotations

import logging
from typing import Any

import requests
from authlib.integrations.base_client import BaseApp, OAuth2Mixin, OAuthError, OpenIDMixin
from authlib.integrations.requests_client import OAuth2Session

from jobqueue.config import Settings
from monitor.web.sso_policy import Profile, groups_of

log = logging.getLogger(__name__)

#: Seconds the monitor waits for the provider on each call.
TIMEOUT = 10.0
#: The discovery document's path under an issuer.
WELL_KNOWN = "/.well-known/openid-configuration"
_GITHUB = "https://github.com"


class ProviderError(Exception):
    """The provider failed or refused the flow: ``status`` 400 (a bad or replayed code), 403
    (the provider said no, a token that does not check out) or 503 (unreachable, broken)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class _Framework:
    """Authlib's framework hook: the monitor keeps no provider tokens."""

    def update_token(self, *args: Any, **kwargs: Any) -> None:
        return None


class SsoClient(OAuth2Mixin, OpenIDMixin, BaseApp):  # type: ignore[misc]
    """Authlib's OAuth2 + OpenID client on requests, without a web framework's session."""

    client_cls = OAuth2Session


def _github_api(base: str) -> str:
    return "https://api.github.com/" if base == _GITHUB else base + "/api/v3/"


def needs_groups(settings: Settings) -> bool:
    """True when a role or tenant entry names a group (not an email or ``@domain``)."""
    keys = list(settings.monitor_sso_roles) + list(settings.monitor_sso_tenants)
    return any("@" not in key for key in keys)


def scopes(settings: Settings) -> list[str]:
    """The scopes asked for: the kind's own, then the configured extra ones."""
    if settings.monitor_sso_provider == "github":
        base = ["read:user", "user:email"] + (["read:org"] if needs_groups(settings) else [])
    else:
        base = ["openid", "email", "profile"]
    return base + [s for s in settings.monitor_sso_scopes if s not in base]


def build(settings: Settings) -> SsoClient:
    """The Authlib client of the configured provider (nothing fetched yet)."""
    client_kwargs: dict[str, Any] = {"scope": " ".join(scopes(settings)), "code_challenge_method": "S256",
                     "default_timeout": TIMEOUT}
    common = {"client_id": settings.monitor_sso_client_id, "client_secret": settings.monitor_sso_client_secret,
              "client_kwargs": client_kwargs}
    if settings.monitor_sso_provider == "github":
        client_kwargs["token_endpoint_auth_method"] = "client_secret_post"  # GitHub reads the body only
        base = (settings.monitor_sso_url or _GITHUB).rstrip("/")
        return SsoClient(_Framework(), name="github", authorize_url=f"{base}/login/oauth/authorize",
                         access_token_url=f"{base}/login/oauth/access_token", api_base_url=_github_api(base),
                         **common)
    url = settings.monitor_sso_url.rstrip("/")
    discovery = url if url.endswith(WELL_KNOWN) else url + WELL_KNOWN
    return SsoClient(_Framework(), name="oidc", server_metadata_url=discovery, **common)


def _metadata(client: SsoClient, settings: Settings) -> dict[str, Any]:
    """The provider's discovery document (fetched once; a failure is retried next time)."""
    if settings.monitor_sso_provider == "github":
        return {}
    try:
        metadata: dict[str, Any] = client.load_server_metadata()
    except (requests.RequestException, ValueError) as exc:
        raise ProviderError(503, f"the identity provider's discovery document is unavailable ({type(exc).__name__})") from None
    issuer = settings.monitor_sso_url.rstrip("/")
    if not issuer.endswith(WELL_KNOWN) and str(metadata.get("issuer", "")).rstrip("/") != issuer:
        client.server_metadata.clear()
        raise ProviderError(503, f"the provider's discovery document names issuer {metadata.get('issuer')!r}, "
                                 f"not the configured {issuer!r}")
    return metadata


def authorization(client: SsoClient, settings: Settings, redirect_uri: str) -> dict[str, str]:
    """Where to send the browser: ``url``, and the ``state``, ``code_verifier`` and ``nonce``
    the callback must find again."""
    _metadata(client, settings)
    try:
        found: dict[str, str] = client.create_authorization_url(redirect_uri)
    except (requests.RequestException, RuntimeError) as exc:
        raise ProviderError(503, f"cannot start the login with the identity provider ({exc})") from None
    return found


def exchange(client: SsoClient, settings: Settings, redirect_uri: str, code: str, verifier: str) -> dict[str, Any]:
    """The provider's tokens for ``code`` (with the PKCE ``verifier``)."""
    _metadata(client, settings)
    try:
        token: dict[str, Any] = client.fetch_access_token(redirect_uri, code=code, code_verifier=verifier)
    except OAuthError as exc:
        raise ProviderError(400, f"the identity provider refused the login code ({exc.error})") from None
    except (requests.RequestException, ValueError) as exc:
        raise ProviderError(503, f"the identity provider's token endpoint failed ({type(exc).__name__})") from None
    if not isinstance(token, dict) or not token.get("access_token"):
        raise ProviderError(400, "the identity provider sent no access token")
    return token


def profile(client: SsoClient, settings: Settings, token: dict[str, Any], nonce: str) -> Profile:
    """The user the tokens belong to, as the provider describes them."""
    try:
        if settings.monitor_sso_provider == "github":
            return _github_profile(client, settings, token)
        return _oidc_profile(client, settings, token, nonce)
    except ProviderError:
        raise
    except (requests.RequestException, ValueError) as exc:
        raise ProviderError(503, f"the identity provider failed to describe the user ({type(exc).__name__})") from None


def _oidc_profile(client: SsoClient, settings: Settings, token: dict[str, Any], nonce: str) -> Profile:
    if "id_token" not in token:
        raise ProviderError(403, "the identity provider sent no ID token (is the openid scope allowed?)")
    try:
        claims = dict(client.parse_id_token(token, nonce=nonce))
    except (requests.RequestException, RuntimeError) as exc:
        raise ProviderError(503, f"the identity provider's keys are unavailable ({type(exc).__name__})") from None
    except Exception as exc:  # joserfc's and Authlib's claim errors: a token that does not check out
        log.warning("refused an ID token: %s", exc)
        raise ProviderError(403, f"the identity provider's ID token does not check out ({type(exc).__name__})") from None
    group_claim = settings.monitor_sso_groups_claim
    metadata = client.server_metadata
    if (not claims.get("email") or (group_claim and group_claim not in claims)) and metadata.get("userinfo_endpoint"):
        info = dict(client.userinfo(token=token))
        if info.get("sub") == claims.get("sub"):  # OIDC core 5.3.2: else it is not this user's
            claims = {**info, **claims}
    email = claims.get("email")
    verified = isinstance(email, str) and "@" in email and claims.get("email_verified") is not False
    return Profile(subject=str(claims.get("sub", "")), emails=(str(email),) if verified else (),
                   groups=groups_of(claims, group_claim), claims=claims)


def _github_profile(client: SsoClient, settings: Settings, token: dict[str, Any]) -> Profile:
    user = _github_json(client, "user", token)
    if not isinstance(user, dict) or not isinstance(user.get("login"), str):
        raise ProviderError(503, "GitHub's /user answer has no login")
    listed = _github_json(client, "user/emails", token)
    entries = [e for e in listed if isinstance(e, dict)] if isinstance(listed, list) else []
    verified = [e for e in entries if e.get("verified") is True and isinstance(e.get("email"), str)]
    verified.sort(key=lambda e: e.get("primary") is not True)
    groups: tuple[str, ...] = ()
    if needs_groups(settings):
        orgs = _github_json(client, "user/orgs", token)
        groups = tuple(str(o["login"]) for o in orgs if isinstance(o, dict) and isinstance(o.get("login"), str)) \
            if isinstance(orgs, list) else ()
    return Profile(subject=user["login"], emails=tuple(e["email"] for e in verified), groups=groups,
                   claims={"login": user["login"], "id": user.get("id"), "name": user.get("name")})


def _github_json(client: SsoClient, path: str, token: dict[str, Any]) -> Any:
    response = client.get(path, token=token, headers={"Accept": "application/vnd.github+json"})
    if response.status_code in (401, 403, 404):  # GitHub hides what a token's scopes do not open
        raise ProviderError(403, f"GitHub refused /{path} ({response.status_code}): are its scopes granted?")
    response.raise_for_status()
    return response.json()
