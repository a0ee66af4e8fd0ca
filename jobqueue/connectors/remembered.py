"""A payload validation remembered: the same small payload is checked by its model once per process.

A worker validates each job's payload before it runs it (the client did at submit, in another
process, and anyone on the broker could have sent the message), and a fleet runs the same
small payloads over and over: a benchmark's ``{"steps": 0}``, a health probe, a fixed A/B
request. A model's check of such a payload (pydantic, cold on a busy worker's job thread)
then costs more than the job. :func:`remembered` wraps a connector's validation so that a
flat payload -- a JSON object of at most :data:`MAX_FIELDS` scalars -- is checked once and
its normalised form handed out (a copy) every later time. Validation is a function of the
payload alone, so nothing changes but the cost: the key keeps each value's exact type
(``True`` is not ``1``) and a float's exact bits (``-0.0`` is not ``0.0``); a payload that
fails is checked again every time (the error is not kept); anything else (nested, long text,
a normalised form holding more than scalars) goes to the model every time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

#: Most fields a payload may have to be remembered.
MAX_FIELDS = 16
#: Longest text value of a payload that is remembered.
MAX_TEXT = 256
#: Payloads remembered per validation (least recently used go first).
MAX_KEPT = 256

_SCALARS = frozenset({str, int, float, bool, type(None)})

Validate = Callable[[Any], dict[str, Any]]
Key = tuple[tuple[str, type, Any], ...]


def flat_key(payload: Any) -> Key | None:
    """``payload`` as a key that equals another's only for the very same JSON (same fields,
    types and values, in the same order); None when it is not a small flat object."""
    if type(payload) is not dict or len(payload) > MAX_FIELDS:
        return None
    key = []
    for name, value in payload.items():
        kind = type(value)
        if type(name) is not str or kind not in _SCALARS:
            return None
        if kind is float:
            value = value.hex()  # the exact bits: -0.0 and 0.0 differ, nan equals itself
        elif kind is str and len(value) > MAX_TEXT:
            return None
        key.append((name, kind, value))
    return tuple(key)


def remembered(validate: Validate, maxsize: int = MAX_KEPT) -> Validate:
    """``validate`` for a flat payload run once per distinct payload (see the module doc)."""

    @functools.lru_cache(maxsize=maxsize)
    def by_key(key: Key) -> tuple[dict[str, Any], bool]:
        payload = {name: float.fromhex(value) if kind is float else value for name, kind, value in key}
        result = validate(payload)
        return result, all(type(value) in _SCALARS for value in result.values())

    @functools.wraps(validate)
    def check(payload: Any) -> dict[str, Any]:
        key = flat_key(payload)
        if key is None:
            return validate(payload)
        result, flat = by_key(key)
        return dict(result) if flat else validate(payload)

    check.cache_info = by_key.cache_info  # type: ignore[attr-defined]
    check.cache_clear = by_key.cache_clear  # type: ignore[attr-defined]
    return check
