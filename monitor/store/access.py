"""API keys and the audit trail in the monitor's store.

**Keys.** A key reads ``jq_<id>_<secret>``: ``id`` is 12 hex characters, public, the row's
primary key (the lookup prefix); ``secret`` is 32 random bytes (256 bits, URL-safe base64). The
store keeps only ``sha256(id + ":" + secret)``. A slow password hash (scrypt, bcrypt) exists to
make guessing *low-entropy human passwords* from a stolen hash expensive; a 256-bit random
secret cannot be guessed either way, so a fast hash protects it as well and keeps the check
per request at microseconds (scrypt would add ~50 ms to every API call, or need a cache of
plaintext-equivalent results). The secret is returned once, by :func:`create_key`, and never
again.

**Audit.** Rows are only ever added (by the single writer, :mod:`monitor.ingest.writer`) and
pruned by age; nothing here updates one.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select

from monitor.store.models import ApiKeyRow, AuditRow
from monitor.store.store import Store

#: What a key looks like; anything else is not looked up at all.
KEY_PATTERN = re.compile(r"^jq_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")
#: Most audit entries one page may return.
MAX_AUDIT_PAGE = 500


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str | float | int) -> float:
    """Seconds in ``90d``, ``12h``, ``30m``, ``2w``, ``45s`` or a plain number of seconds;
    ValueError for anything else or a non-positive duration."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = _DURATION.match(str(text))
        if match is None:
            raise ValueError(f"not a duration: {text!r} (e.g. 90d, 12h, 30m)")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not 0 < seconds < 100 * 365 * 86400:
        raise ValueError(f"duration out of range: {text!r}")
    return seconds


def _digest(key_id: str, secret: str) -> str:
    return hashlib.sha256(f"{key_id}:{secret}".encode()).hexdigest()


def key_dict(row: ApiKeyRow, now: float | None = None) -> dict[str, Any]:
    """The public form of a key (never its hash)."""
    now = time.time() if now is None else now
    state = "revoked" if row.revoked_at is not None else (
        "expired" if row.expires_at is not None and row.expires_at <= now else "active")
    return {"id": row.id, "name": row.name, "role": row.role, "tenant": row.tenant, "created_at": row.created_at,
            "created_by": row.created_by, "expires_at": row.expires_at, "revoked_at": row.revoked_at, "state": state}


def create_key(store: Store, role: str, *, name: str = "", tenant: str | None = None,
               expires_at: float | None = None, created_by: str = "") -> tuple[str, dict[str, Any]]:
    """Create a key; returns ``(the full key, its public form)``. The full key is not stored."""
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    row = ApiKeyRow(id=key_id, name=name[:255], role=role, tenant=tenant or None, secret_hash=_digest(key_id, secret),
                    created_at=time.time(), created_by=created_by[:255], expires_at=expires_at, revoked_at=None)
    with store.write() as tx:
        tx.session.add(row)
    return f"jq_{key_id}_{secret}", key_dict(row)


def list_keys(store: Store) -> list[dict[str, Any]]:
    """Every key, newest first, in its public form."""
    now = time.time()
    with store.read() as session:
        rows = session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at.desc(), ApiKeyRow.id)).all()
        return [key_dict(row, now) for row in rows]


def revoke_key(store: Store, key_id: str) -> dict[str, Any] | None:
    """Revoke a key (idempotent); None when there is no such key."""
    with store.write() as tx:
        row = tx.session.get(ApiKeyRow, key_id)
        if row is None:
            return None
        if row.revoked_at is None:
            row.revoked_at = time.time()
        return key_dict(row)


@dataclass(frozen=True)
class KeyMatch:
    """A valid key's identity: its id, role and tenant."""

    id: str
    role: str
    tenant: str | None


def check_key(store: Store, presented: str, now: float | None = None) -> KeyMatch | None:
    """The key ``presented`` when it exists, matches, and is neither revoked nor expired."""
    match = KEY_PATTERN.match(presented)
    if match is None:
        return None
    return active_key(store, match.group(1), _digest(match.group(1), match.group(2)), now)


def active_key(store: Store, key_id: str, digest: str | None = None, now: float | None = None) -> KeyMatch | None:
    """Key ``key_id`` when it is active (and, given ``digest``, its hash equals it)."""
    now = time.time() if now is None else now
    with store.read() as session:
        row = session.get(ApiKeyRow, key_id)
        if row is None or row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
            return None
        if digest is not None and not hmac.compare_digest(row.secret_hash, digest):
            return None
        return KeyMatch(row.id, row.role, row.tenant)


def any_key(store: Store) -> bool:
    """True when the store holds any key that is not revoked (auth is then configured)."""
    with store.read() as session:
        return session.scalar(select(ApiKeyRow.id).where(ApiKeyRow.revoked_at.is_(None)).limit(1)) is not None


# -- audit ---------------------------------------------------------------------------------


AUDIT_FIELDS = ("at", "subject", "role", "tenant", "address", "action", "target", "outcome", "status", "detail")


def add_audit(session: Any, entries: list[dict[str, Any]]) -> None:
    """Add audit entries (dicts with :data:`AUDIT_FIELDS`) in the caller's transaction."""
    for entry in entries:
        session.add(AuditRow(**{name: entry.get(name) for name in AUDIT_FIELDS}))


def prune_audit(store: Store, older_than: float) -> int:
    """Delete audit entries from before ``older_than`` (Unix time); returns how many."""
    with store.write() as tx:
        result = tx.session.execute(delete(AuditRow).where(AuditRow.at < older_than))
        return int(getattr(result, "rowcount", 0) or 0)


def read_audit(store: Store, *, limit: int = 100, offset: int = 0, filters: dict[str, str] | None = None,
               since: float | None = None, until: float | None = None) -> tuple[list[dict[str, Any]], int]:
    """Audit entries, newest first, matching ``filters`` (exact values of subject, action,
    outcome, tenant, target) and the time range; with the total that match."""
    query = select(AuditRow)
    for name, value in (filters or {}).items():
        query = query.where(getattr(AuditRow, name) == value)
    if since is not None:
        query = query.where(AuditRow.at >= since)
    if until is not None:
        query = query.where(AuditRow.at < until)
    with store.read() as session:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = session.scalars(query.order_by(AuditRow.at.desc(), AuditRow.id.desc()).limit(limit).offset(offset))
        found = [{"id": row.id, **{name: getattr(row, name) for name in AUDIT_FIELDS}} for row in rows]
    return found, int(total)
