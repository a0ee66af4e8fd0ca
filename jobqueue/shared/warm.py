"""Warm routing: which checkpoints a worker has loaded, and what that means for its queues and ETAs.

One home for the rules the worker (which queues it consumes now), the monitor (the worker
card, queue ETAs) and the client (a job's expected loading) share. docs/connectors.md, "Warm
routing", tells the whole rule.

* A job's **checkpoint** is the model it is routed on (:func:`checkpoint_of`: the first of its
  required models, a workflow's checkpoint loader coming first), so its queue is
  :func:`~jobqueue.shared.routing.model_queue` of that checkpoint.
* A worker's **loaded** checkpoints travel in its connectors' capabilities
  (``capabilities.loaded``, with ``capabilities.load_seconds``, its measured cost of a load),
  read back by :func:`loaded_from_details` and :func:`load_seconds_from_details`.
* :func:`split_queues` tells a worker's warm model queues (checkpoints it has loaded) from its
  cold ones: it consumes the cold ones only when :func:`cold_open` says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from jobqueue.shared.requirements import DETAILS_KEY, Requirements
from jobqueue.shared.routing import model_queue

#: Key (in a connector's capabilities) of the checkpoints its service has loaded now.
LOADED_KEY = "loaded"
#: Key (in a connector's capabilities) of the seconds a checkpoint load costs there (measured).
LOAD_SECONDS_KEY = "load_seconds"


def checkpoint_of(requires: Any) -> str | None:
    """The checkpoint a job (its ``requires`` as it travels) is routed on, or None."""
    req = requires if isinstance(requires, Requirements) else Requirements.from_dict(requires)
    if req.tags:  # routed on a tag: warm routing does not apply
        return None
    return req.models[0] if req.models else None


def _capabilities(details: Mapping[str, Any] | None) -> Mapping[str, Any]:
    caps = (details or {}).get(DETAILS_KEY) if isinstance(details, Mapping) else None
    return caps if isinstance(caps, Mapping) else {}


def loaded_from_details(details: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The checkpoints a connector's status details say are loaded (empty when none or unknown)."""
    names = _capabilities(details).get(LOADED_KEY)
    return tuple(n for n in names if isinstance(n, str) and n) if isinstance(names, list) else ()


def load_seconds_from_details(details: Mapping[str, Any] | None) -> float | None:
    """The measured cost of a checkpoint load a connector's details report (None: not measured yet)."""
    value = _capabilities(details).get(LOAD_SECONDS_KEY)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def split_queues(service: str, queues: Iterable[str], loaded: Iterable[str],
                 models: Iterable[str]) -> tuple[list[str], list[str]]:
    """``(warm, cold)``: of ``queues``, the model queues of checkpoints not in ``loaded`` are
    cold (``models``: the service's models whose queues may appear); every other queue
    (tags, VRAM, loaded checkpoints) is warm."""
    loaded_set = set(loaded)
    cold_names = {model_queue(service, m) for m in models if m not in loaded_set}
    warm: list[str] = []
    cold: list[str] = []
    for queue in queues:
        (cold if queue in cold_names else warm).append(queue)
    return warm, cold


def cold_open(*, grace: float, busy: bool, idle_for: float, closed_for: float, max_wait: float) -> bool:
    """Whether a worker consumes its cold model queues now.

    Always with warm routing off (``grace`` 0). Else once it has been idle ``grace`` seconds (a
    worker with the checkpoint loaded, if one is idle, took the job meanwhile), or when its
    cold queues have been closed ``max_wait`` seconds (it is kept busy by its warm jobs: the
    cold ones must not wait for ever). While it runs a job the set does not matter (it takes
    one job at a time); closing them then makes its next take follow the rule.
    """
    if grace <= 0:
        return True
    if closed_for >= max_wait:
        return True
    return not busy and idle_for >= grace


def expected_load(model: str | None, workers: Iterable[tuple[Iterable[str], float | None]]) -> float:
    """Seconds of checkpoint loading a queued job needing ``model`` should expect, given the
    workers that can run it (``(loaded, load_seconds)`` each): 0 when one has it loaded (it
    takes the job first) or nothing is known, else the smallest measured load among them."""
    if model is None:
        return 0.0
    costs: list[float] = []
    for loaded, seconds in workers:
        if model in set(loaded):
            return 0.0
        if seconds is not None:
            costs.append(seconds)
    return min(costs) if costs else 0.0
