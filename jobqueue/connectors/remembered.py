"""A payload validation remembered: the same small payload is checked by its model once per process.

A worker validates each job's payload before it runs it (the client did at submit, in another
process, and anyone on the broker could have sent the message), and a fleet runs the same
small payloads over and over: a benchmark's ``{"steps": 0}``, a health probe, a fixed A/B
request. A model's check of such a payload (pydantic, cold on a busy worker's job thread)
then costs more than the job. :func:`remembered` wraps a connector's validation so that a
flat payload -- a small JSON object of scalars (:func:`~jobqueue.shared.flat.flat_key`) -- is
checked once and its normalised form handed out (a copy) every later time. Validation is a
function of the payload alone, so nothing changes but the cost: the key keeps each value's
exact type (``True`` is not ``1``) and a float's exact bits (``-0.0`` is not ``0.0``); a payload that
fails is checked again every time (the error is not kept); anything else (nested, long text,
a normalised form holding more than scalars) goes to the model every time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from jobqueue.shared.flat import SCALARS, Key, flat_key, from_flat_key

#: Payloads remembered per validation (least recently used go first).
MAX_KEPT = 256

Validate = Callable[[Any], dict[str, Any]]


def remembered(validate: Validate, maxsize: int = MAX_KEPT) -> Validate:
    """``validate`` for a flat payload run once per distinct payload (see the module doc)."""

    @functools.lru_cache(maxsize=maxsize)
    def by_key(key: Key) -> tuple[dict[str, Any], bool]:
        result = validate(from_flat_key(key))
        return result, all(type(value) in SCALARS for value in result.values())

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
