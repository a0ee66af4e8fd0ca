"""Tenants: the customers a shared fleet serves. A job belongs to at most one tenant (its
``options["tenant"]``, set at submit from the caller's key or user); the name is shown,
filtered on and may name queues, so it is kept to a small alphabet."""

from __future__ import annotations

import re

from jobqueue.errors import SubmitError

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
