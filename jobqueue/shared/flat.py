"""A small flat JSON object as a hashable key, for remembering what is computed from one.

A worker sees the same small payloads over and over (a benchmark's ``{"steps": 0}``, a health
probe, a fixed A/B request); what is computed from one alone -- its validation
(:mod:`jobqueue.connectors.remembered`), its summary (:mod:`jobqueue.shared.summary`) -- can
be remembered by :func:`flat_key`. Two keys are equal only for the very same JSON: same
fields in the same order, each value of the same exact type (``True`` is not ``1``) and, for a
float, the same bits (``-0.0`` is not ``0.0``). :func:`from_flat_key` gives the object back.
"""

from __future__ import annotations

from typing import Any

#: Most fields an object may have to have a key.
MAX_FIELDS = 16
#: Longest text value an object with a key may hold.
MAX_TEXT = 256

#: The value types of a flat object.
SCALARS = frozenset({str, int, float, bool, type(None)})

Key = tuple[tuple[str, type, Any], ...]


def flat_key(value: Any) -> Key | None:
    """``value`` as a key (see the module doc); None when it is not a small flat JSON object."""
    if type(value) is not dict or len(value) > MAX_FIELDS:
        return None
    key = []
    for name, item in value.items():
        kind = type(item)
        if type(name) is not str or kind not in SCALARS:
            return None
        if kind is float:
            item = item.hex()  # the exact bits: -0.0 and 0.0 differ, nan equals itself
        elif kind is str and len(item) > MAX_TEXT:
            return None
        key.append((name, kind, item))
    return tuple(key)


def from_flat_key(key: Key) -> dict[str, Any]:
    """The object :func:`flat_key` made ``key`` of (a new one: equal, same types and bits)."""
    return {name: float.fromhex(item) if kind is float else item for name, kind, item in key}
