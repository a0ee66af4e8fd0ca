"""Who single sign-on lets in, with which role and tenant: a pure function of the settings and
what the provider said about the user (no I/O; :mod:`monitor.web.sso` fetches the profile).

A user is let in when a verified email of theirs is in ``JOBQUEUE_MONITOR_SSO_ALLOWED_EMAILS``,
its domain in ``..._ALLOWED_DOMAINS`` (``*``: any), or an entry of ``..._ROLES`` matches one of
their groups, emails or ``@domains``. Their role is the strongest matching entry of
``..._ROLES``, else ``..._DEFAULT_ROLE``. Their tenant is the ``..._TENANT_CLAIM`` claim, else
the first entry of ``..._TENANTS`` that matches their email, then ``@domain``, then a group.
Emails compare case-insensitively; an email the provider marks unverified never counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobqueue.config import Settings
from monitor.web.routes import Role


class SsoRefused(Exception):
    """The provider proved who the user is, and this monitor does not let them in."""


@dataclass(frozen=True)
class Profile:
    """What the provider says about a user: a stable ``subject`` (the OIDC ``sub``, GitHub's
    login), their verified ``emails`` (the primary first), ``groups``, and the raw ``claims``."""

    subject: str
    emails: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    claims: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Admission:
    """A user let in: the name the audit trail and pages show, their role and tenant."""

    subject: str
    role: Role
    tenant: str | None


def groups_of(claims: dict[str, Any], claim: str) -> tuple[str, ...]:
    """The groups in ``claims[claim]``: a list of names, or one name (some providers send a
    string); anything else counts as none."""
    value = claims.get(claim) if claim else None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)):
        return tuple(str(item) for item in value if isinstance(item, (str, int)))
    return ()


def _keys(profile: Profile) -> list[str]:
    """The keys ``..._ROLES`` and ``..._TENANTS`` entries may name, most specific first."""
    emails = [e.lower() for e in profile.emails]
    domains = ["@" + e.rpartition("@")[2] for e in emails if "@" in e]
    return emails + domains + list(profile.groups)


def _lowered(mapping: Any) -> dict[str, str]:
    return {(k.lower() if "@" in k else k): str(v) for k, v in dict(mapping).items()}


def admit(settings: Settings, profile: Profile) -> Admission:
    """The :class:`Admission` of ``profile``, or :class:`SsoRefused` saying why not."""
    emails = [e.lower() for e in profile.emails]
    allowed_emails = {e.lower() for e in settings.monitor_sso_allowed_emails}
    allowed_domains = {d.lower().lstrip("@") for d in settings.monitor_sso_allowed_domains}
    keys = _keys(profile)
    roles = _lowered(settings.monitor_sso_roles)
    matched = [Role(roles[k]) for k in keys if k in roles]
    permitted = (bool(matched) or any(e in allowed_emails for e in emails)
                 or any("*" in allowed_domains or e.rpartition("@")[2] in allowed_domains for e in emails if "@" in e))
    shown = emails[0] if emails else profile.subject
    if not permitted:
        if not emails:
            raise SsoRefused(f"{profile.subject} has no verified email and no group this monitor lets in")
        raise SsoRefused(f"{shown} may not log in to this monitor")
    role = max(matched, key=lambda r: r.rank) if matched else Role(settings.monitor_sso_default_role)
    return Admission(subject=shown, role=role, tenant=tenant_of(settings, profile, keys))


def tenant_of(settings: Settings, profile: Profile, keys: list[str]) -> str | None:
    """The user's tenant: the tenant claim, else the first matching ``..._TENANTS`` entry."""
    claim = settings.monitor_sso_tenant_claim
    value = profile.claims.get(claim) if claim else None
    if isinstance(value, str) and value.strip():
        return value.strip()[:255]
    tenants = _lowered(settings.monitor_sso_tenants)
    return next((tenants[k] for k in keys if k in tenants), None)
