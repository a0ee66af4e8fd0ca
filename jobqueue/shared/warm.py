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
* A worker consumes the model queues of checkpoints it has loaded (warm) at all times, and of
  the others (cold) only as :func:`cold_to_open` says: after a grace idle, and not those an
  idle worker holds loaded (:func:`peers_holding`, from the warm hash every worker of a
  Redis result backend keeps up to date, :func:`jobqueue.shared.records.warm_key`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jobqueue.shared.requirements import DETAILS_KEY, Requirements
from jobqueue.shared.routing import model_queue

#: Key (in a connector's capabilities) of the checkpoints its service has loaded now.
LOADED_KEY = "loaded"
#: Key (in a connector's capabilities) of the seconds a checkpoint load costs there (measured).
LOAD_SECONDS_KEY = "load_seconds"


def checkpoint_of(requires: Any) -> str | None:
    """The checkpoint a job (its ``requires`` as it travels) is routed on, or None."""
    if requires is None:  # most jobs require nothing (every job's start asks)
        return None
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


def cold_to_open(cold: Iterable[str], *, grace: float, busy: bool, idle_for: float, closed_for: float,
                 max_wait: float, held_by_idle_peer: Iterable[str] = ()) -> set[str]:
    """Which of a worker's ``cold`` checkpoints (present, not loaded) it takes jobs of now.

    All of them with warm routing off (``grace`` 0), or when its cold queues have been closed
    ``max_wait`` seconds (it is kept busy by its warm jobs: the cold ones must not wait for
    ever). Else none while it runs a job (it takes one at a time; closing them makes its next
    take follow the rule) or until it has been idle ``grace`` seconds (a worker with the
    checkpoint loaded takes the job meanwhile); then those that no idle worker holds loaded
    (``held_by_idle_peer``: that worker takes them at once).
    """
    if grace <= 0 or closed_for >= max_wait:
        return set(cold)
    if busy or idle_for < grace:
        return set()
    held = set(held_by_idle_peer)
    return {m for m in cold if m not in held}


def closed_queues(service: str, models: Iterable[str], loaded: Iterable[str], open_cold: Iterable[str]) -> set[str]:
    """The model queues of ``service`` a worker leaves alone: those of its ``models`` neither
    loaded nor in ``open_cold``."""
    keep = set(loaded) | set(open_cold)
    return {model_queue(service, m) for m in models if m not in keep}


@dataclass(frozen=True)
class Peers:
    """What the other workers of a service hold, from the warm hash (:func:`read_peers`)."""

    #: Checkpoints an idle worker holds loaded (it takes their jobs at once).
    idle_held: frozenset[str] = frozenset()
    #: Checkpoints a busy worker holds loaded (it takes their jobs after its own).
    busy_held: frozenset[str] = frozenset()
    #: This worker's place among the live workers of the service, by name.
    rank: int = 0


def read_peers(entries: Mapping[str, Any], me: str, now: float, stale_after: float) -> Peers:
    """:class:`Peers` from the warm hash's ``{worker: {"loaded", "idle", "at"}}``; entries
    older than ``stale_after`` seconds (a worker that died) are ignored."""
    idle: set[str] = set()
    busy: set[str] = set()
    live = {me}
    for worker, entry in entries.items():
        if worker == me or not isinstance(entry, Mapping):
            continue
        at = entry.get("at")
        if not isinstance(at, (int, float)) or now - at > stale_after:
            continue
        live.add(worker)
        loaded = entry.get("loaded")
        names = {n for n in loaded if isinstance(n, str)} if isinstance(loaded, list) else set()
        (idle if entry.get("idle") is True else busy).update(names)
    return Peers(frozenset(idle), frozenset(busy - idle), sorted(live).index(me))


def peers_holding(entries: Mapping[str, Any], me: str, now: float, stale_after: float) -> set[str]:
    """Checkpoints another worker holds loaded while idle (see :func:`read_peers`)."""
    return set(read_peers(entries, me, now, stale_after).idle_held)


def cold_order(cold: Iterable[str], peers: Peers) -> list[str]:
    """The order in which a worker prefers its open cold checkpoints: those no other worker
    holds first, then those a busy worker holds; within each, sorted and rotated by the
    worker's rank, so idle workers with nothing loaded start on different checkpoints. On
    Redis a worker reads its queues in the order it consumes them (jobqueue's transport reads
    them by priority, then in that order), so this is the order it takes them in."""
    def rotated(names: list[str]) -> list[str]:
        if not names:
            return names
        k = peers.rank % len(names)
        return names[k:] + names[:k]

    names = sorted(set(cold))
    return rotated([n for n in names if n not in peers.busy_held]) + rotated([n for n in names if n in peers.busy_held])


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
