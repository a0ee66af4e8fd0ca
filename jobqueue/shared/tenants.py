"""Tenants: the customers a shared fleet serves. A job belongs to at most one tenant (its
``options["tenant"]``, set at submit from the caller's key or user); the name is shown,
filtered on and may name queues, so it is kept to a small alphabet."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jobqueue.errors import ConfigError, SubmitError

#: What a tenant name may be: 1..64 letters, digits, ``.``, ``_``, ``-``, not starting with a sign.
TENANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_tenant(tenant: object) -> str | None:
    """``tenant`` when it is a valid tenant name (or None); else :class:`SubmitError`."""
    if tenant is None:
        return None
    if not isinstance(tenant, str) or not TENANT_PATTERN.fullmatch(tenant):
        raise SubmitError(
            f"tenant must be 1..64 letters, digits, '.', '_' or '-' (starting with a letter or digit), got {tenant!r}")
    return tenant


def is_tenant(value: object) -> bool:
    """True when ``value`` is a valid tenant name (what a reader of events or records keeps)."""
    return isinstance(value, str) and TENANT_PATTERN.fullmatch(value) is not None


@dataclass(frozen=True)
class TenantQuota:
    """One tenant's limits and share (``JOBQUEUE_TENANT_QUOTAS``): most jobs queued and running
    at once (None: unbounded), and its weight in the fair-share turns (jobs in a row per turn)."""

    queued: int | None = None
    running: int | None = None
    weight: int = 1


@lru_cache(maxsize=16)
def parse_tenant_quotas(value: str) -> dict[str, TenantQuota]:
    """Parse ``acme=queued:100,running:4,weight:2;*=queued:1000`` (``*``: every other tenant; a
    tenant named twice: its last entry counts; the form is checked by ``Settings.check``).
    Cached: read at every submit."""
    quotas: dict[str, TenantQuota] = {}
    for entry in (e.strip() for e in value.split(";")):
        tenant, sep, rest = entry.partition("=")
        if not entry or not sep:
            continue
        fields = {word.strip(): int(number) for word, _, number in
                  (part.partition(":") for part in rest.split(",") if part.strip())}
        try:
            quotas[tenant.strip()] = TenantQuota(**fields)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"JOBQUEUE_TENANT_QUOTAS: {entry!r}: {exc}") from None
    return quotas


def quota_for(settings: Any, tenant: str | None) -> TenantQuota:
    """``tenant``'s quota and weight under ``settings`` (its own entry, else ``*``'s, whole; no
    tenant, or no entry: no limit, weight 1)."""
    if tenant is None:
        return TenantQuota()
    quotas = parse_tenant_quotas(settings.tenant_quotas)
    return quotas.get(tenant) or quotas.get("*") or TenantQuota()
