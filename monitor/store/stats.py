"""Summary statistics that cannot overflow or go non-finite, whatever reached the store.

Runtimes come from events; a forged ``runtime: 1e308`` must not turn ``/api/stats`` into a 500
(``statistics.fmean`` overflows in ``fsum``) nor a median into ``inf`` (the mean of two
``1e308`` middle values). Non-finite values are left out; means and the even-count median
divide before they add.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def finite_values(values: Iterable[Any]) -> list[float]:
    """The finite numbers among ``values`` as floats (NaN, infinities and non-numbers dropped)."""
    out: list[float] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        number = float(value)
        if math.isfinite(number):
            out.append(number)
    return out


def safe_mean(values: list[float]) -> float | None:
    """The mean of finite ``values``, summing ``v / n`` so no partial sum exceeds the largest
    value; None for no values."""
    if not values:
        return None
    n = len(values)
    return math.fsum(v / n for v in values)


def safe_median(values: Iterable[Any]) -> float | None:
    """The median of the finite numbers in ``values`` (None for none), averaging the two middle
    values of an even count as ``a/2 + b/2`` so it stays finite."""
    ordered = sorted(finite_values(values))
    if not ordered:
        return None
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return ordered[mid - 1] / 2 + ordered[mid] / 2


def percentile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of the sorted list ``ordered`` (not empty)."""
    rank = max(0, math.ceil(q * len(ordered)) - 1)
    return ordered[rank]


def summary(values: Iterable[Any]) -> dict[str, Any]:
    """``median, mean, min, max, p95, samples`` of the finite numbers in ``values`` (each None
    and ``samples`` 0 when there are none)."""
    ordered = sorted(finite_values(values))
    if not ordered:
        return {"median": None, "mean": None, "min": None, "max": None, "p95": None, "samples": 0}
    return {"median": safe_median(ordered), "mean": safe_mean(ordered), "min": ordered[0], "max": ordered[-1],
            "p95": percentile(ordered, 0.95), "samples": len(ordered)}
