"""What a job needs (models, VRAM, tags), what a worker offers, and the rules between them.

One home for the matching rules, used by the client (validation and routing at submit), the
worker (the re-check before a job starts) and the monitor (``waiting_for``):

* :func:`parse_requires` checks a caller's ``requires`` and refuses a malformed one (nothing
  is enqueued): ``{"models": [...], "vram_gb": 20, "tags": ["customer:acme"]}``.
* :func:`resolve` adds the models the payload itself names (a ComfyUI workflow's loader nodes,
  through the connector's ``required_models``).
* :func:`route_queue` picks the one capability queue the job is sent to (see
  docs/architecture.md, "Capability routing"); :func:`capability_queues` lists the queues a
  worker consumes for what it has.
* :func:`unmet` says what a worker lacks; :func:`waiting_for` says why no online worker can run
  a job, in words (``"no online worker has model c.safetensors"``), or None.

A worker's capabilities travel in its connectors' status details, under ``capabilities``:
``{"models": {"checkpoints": [...], "loras": [...]}, "vram_total_gb": 24.0, "vram_free_gb":
23.1, "tags": ["customer:acme"]}`` (:func:`capabilities_from_details` reads them back).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jobqueue.errors import InvalidRequirementError
from jobqueue.shared.routing import (
    VRAM_STEPS,
    model_queue,
    service_queue,
    tag_queue,
    vram_queue,
    vram_step,
)
from jobqueue.states import ConnectorStatus

#: Keys a ``requires`` object may have.
REQUIRE_KEYS = ("models", "vram_gb", "tags")
#: Most models / tags one job may name (a longer list is a mistake, not a job).
MAX_ITEMS = 64
#: Longest model name or tag.
MAX_NAME = 255
#: Largest VRAM requirement (GiB) that some worker could satisfy (the top VRAM step).
MAX_VRAM_GB = float(VRAM_STEPS[-1])
#: Key of the capabilities in a connector's status details.
DETAILS_KEY = "capabilities"


@dataclass(frozen=True)
class Requirements:
    """What one job needs from the worker that runs it (empty: any worker of its service)."""

    models: tuple[str, ...] = ()
    vram_gb: float | None = None
    tags: tuple[str, ...] = ()

    @property
    def is_empty(self) -> bool:
        """True when the job needs nothing beyond its service."""
        return not self.models and self.vram_gb is None and not self.tags

    def as_dict(self) -> dict[str, Any]:
        """The requirements as they travel with the job (JSON)."""
        out: dict[str, Any] = {}
        if self.models:
            out["models"] = list(self.models)
        if self.vram_gb is not None:
            out["vram_gb"] = self.vram_gb
        if self.tags:
            out["tags"] = list(self.tags)
        return out

    @classmethod
    def from_dict(cls, value: Any) -> Requirements:
        """Read requirements back from a job's options or the monitor's record, leniently
        (what cannot be read is ignored: it was checked at submit)."""
        if not isinstance(value, Mapping):
            return cls()
        models = tuple(m for m in value.get("models") or () if isinstance(m, str) and m)
        tags = tuple(t for t in value.get("tags") or () if isinstance(t, str) and t)
        vram = value.get("vram_gb")
        if isinstance(vram, (int, float)) and not isinstance(vram, bool) and vram > 0:
            return cls(models, float(vram), tags)
        return cls(models, None, tags)


@dataclass(frozen=True)
class Capabilities:
    """What one worker offers for one service."""

    worker: str
    service: str
    models: frozenset[str] = frozenset()
    #: Total VRAM of the worker's GPU in GiB, rounded to the nearest whole GiB as cards are
    #: sold (a "24 GB" card reports 23.99 GiB); 0 when there is no GPU.
    vram_gb: int = 0
    tags: frozenset[str] = field(default_factory=frozenset)


def _names(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise InvalidRequirementError(f"requires.{what} must be a list of strings, got {value!r}")
    if len(value) > MAX_ITEMS:
        raise InvalidRequirementError(f"requires.{what} names {len(value)} items; at most {MAX_ITEMS}")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item.strip() or len(item) > MAX_NAME:
            raise InvalidRequirementError(
                f"requires.{what} entries must be non-empty strings of at most {MAX_NAME} characters, got {item!r}")
        if "," in item:
            raise InvalidRequirementError(f"requires.{what} entry {item!r} contains a comma")
        if item.strip() not in out:
            out.append(item.strip())
    return tuple(out)


def parse_requires(value: Any) -> Requirements:
    """Check a caller's ``requires`` and return it; raise :class:`InvalidRequirementError`
    for anything no worker could ever satisfy or that is not understood."""
    if value is None:
        return Requirements()
    if not isinstance(value, Mapping):
        raise InvalidRequirementError(f"requires must be an object with {', '.join(REQUIRE_KEYS)}, got {value!r}")
    unknown = sorted(set(value) - set(REQUIRE_KEYS))
    if unknown:
        raise InvalidRequirementError(f"requires: unknown key(s) {unknown} (expected {', '.join(REQUIRE_KEYS)})")
    models = _names(value["models"], "models") if value.get("models") is not None else ()
    tags = _names(value["tags"], "tags") if value.get("tags") is not None else ()
    vram = value.get("vram_gb")
    if vram is not None:
        if isinstance(vram, bool) or not isinstance(vram, (int, float)) or not math.isfinite(vram) or vram <= 0:
            raise InvalidRequirementError(f"requires.vram_gb must be a positive number of GiB, got {vram!r}")
        if vram > MAX_VRAM_GB:
            raise InvalidRequirementError(f"requires.vram_gb={vram} is more than any GPU has (at most {MAX_VRAM_GB:g})")
        vram = float(vram)
    return Requirements(models, vram, tags)


def resolve(requires: Any, payload_models: Iterable[str] = ()) -> Requirements:
    """The job's requirements: the caller's (checked) plus the models its payload names."""
    given = parse_requires(requires)
    models = list(given.models)
    for name in payload_models:
        if isinstance(name, str) and name and name not in models:
            models.append(name)
    if len(models) > MAX_ITEMS:
        raise InvalidRequirementError(f"the job needs {len(models)} models; at most {MAX_ITEMS}")
    return Requirements(tuple(models), given.vram_gb, given.tags)


# -- routing ---------------------------------------------------------------------------------


def route_queue(service: str, req: Requirements) -> str:
    """The one queue a job is sent to: its most selective requirement's.

    Tags first (they usually isolate a customer or a region: few workers), then the first
    model (a workflow's checkpoint comes first), then VRAM; no requirement: the service queue.
    The worker that receives it re-checks *all* requirements before it starts (see
    :mod:`jobqueue.worker.handback`).
    """
    if req.tags:
        return tag_queue(service, req.tags[0])
    if req.models:
        return model_queue(service, req.models[0])
    if req.vram_gb is not None:
        step = vram_step(req.vram_gb)
        assert step is not None  # parse_requires refused more than the top step
        return vram_queue(service, step)
    return service_queue(service)


def capability_queues(cap: Capabilities) -> list[str]:
    """Every capability queue a worker with ``cap`` consumes (it satisfies each one's job)."""
    queues = [tag_queue(cap.service, t) for t in sorted(cap.tags)]
    queues += [model_queue(cap.service, m) for m in sorted(cap.models)]
    queues += [vram_queue(cap.service, s) for s in VRAM_STEPS if s <= cap.vram_gb]
    return queues


# -- matching --------------------------------------------------------------------------------


def unmet(req: Requirements, cap: Capabilities) -> list[str]:
    """What ``cap`` lacks to run a job needing ``req``, one phrase each (empty: it can)."""
    missing = [f"tag {t}" for t in req.tags if t not in cap.tags]
    missing += [f"model {m}" for m in req.models if m not in cap.models]
    if req.vram_gb is not None and cap.vram_gb < req.vram_gb:
        missing.append(f"{req.vram_gb:g} GiB of VRAM")
    return missing


def satisfies(req: Requirements, cap: Capabilities) -> bool:
    """True when a worker with ``cap`` may run a job needing ``req``."""
    return not unmet(req, cap)


def waiting_for(service: str | None, req: Requirements, online: Iterable[Capabilities]) -> str | None:
    """Why no online worker can run a queued job, or None when one can (or nothing is needed).

    Names every requirement that no online worker meets on its own; when each is met by
    someone but no worker meets all of them, says so.
    """
    if req.is_empty:
        return None
    caps = [c for c in online if service is None or c.service == service]
    if any(satisfies(req, c) for c in caps):
        return None
    if not caps:
        return f"no online worker runs {service or 'this service'}"
    alone = [Requirements(models=(m,)) for m in req.models] + [Requirements(tags=(t,)) for t in req.tags]
    if req.vram_gb is not None:
        alone.append(Requirements(vram_gb=req.vram_gb))
    nobody = [unmet(one, Capabilities("", ""))[0] for one in alone if not any(satisfies(one, c) for c in caps)]
    if nobody:
        return "no online worker has " + ", ".join(nobody)
    return "no online worker has all of: " + ", ".join(unmet(req, Capabilities("", "")))


def capabilities_from_details(worker: str, service: str, details: Mapping[str, Any] | None) -> Capabilities:
    """A worker's capabilities for ``service`` from its connector's status details."""
    raw = (details or {}).get(DETAILS_KEY)
    if not isinstance(raw, Mapping):
        return Capabilities(worker, service)
    models: set[str] = set()
    folders = raw.get("models")
    if isinstance(folders, Mapping):
        for names in folders.values():
            if isinstance(names, list):
                models.update(n for n in names if isinstance(n, str))
    vram = raw.get("vram_total_gb")
    vram_gb = round(vram) if isinstance(vram, (int, float)) and not isinstance(vram, bool) and vram > 0 else 0
    tags = raw.get("tags")
    tag_set = frozenset(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else frozenset()
    return Capabilities(worker, service, frozenset(models), vram_gb, tag_set)


def worker_capabilities(worker: str, connectors: Mapping[str, Any]) -> list[Capabilities]:
    """Capabilities of one worker from its connectors as the monitor and the
    ``connector_status`` command show them (``{service: {"status", "details"}}``): only the
    healthy ones can take jobs."""
    out = []
    for service, conn in connectors.items():
        if not isinstance(conn, Mapping):
            continue
        try:
            healthy = ConnectorStatus(conn.get("status")).is_healthy
        except ValueError:
            healthy = False
        if healthy:
            out.append(capabilities_from_details(worker, service, conn.get("details")))
    return out


def capability_summary(connectors: Mapping[str, Any]) -> dict[str, Any]:
    """Models (every folder, sorted), VRAM, tags, and the checkpoints loaded with the cost of a
    load (warm routing) of one worker, from its connectors (``{service: {"details": ...}}``):
    the monitor's worker card and API show it."""
    models: set[str] = set()
    tags: set[str] = set()
    loaded: set[str] | None = None
    load: float | None = None
    total: float | None = None
    free: float | None = None
    for conn in connectors.values():
        details = conn.get("details") if isinstance(conn, Mapping) else None
        caps = details.get(DETAILS_KEY) if isinstance(details, Mapping) else None
        if not isinstance(caps, Mapping):
            continue
        folders = caps.get("models")
        if isinstance(folders, Mapping):
            for names in folders.values():
                if isinstance(names, list):
                    models.update(n for n in names if isinstance(n, str))
        if isinstance(caps.get("tags"), list):
            tags.update(t for t in caps["tags"] if isinstance(t, str))
        if isinstance(caps.get("loaded"), list):  # warm routing (jobqueue/shared/warm.py)
            loaded = (loaded or set()) | {n for n in caps["loaded"] if isinstance(n, str)}
        seconds = caps.get("load_seconds")
        if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds >= 0:
            load = max(load or 0.0, float(seconds))
        for key, value in (("vram_total_gb", caps.get("vram_total_gb")), ("vram_free_gb", caps.get("vram_free_gb"))):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                if key == "vram_total_gb":
                    total = max(total or 0.0, float(value))
                else:
                    free = max(free or 0.0, float(value))
    out: dict[str, Any] = {"models": sorted(models), "vram_total_gb": total, "vram_free_gb": free,
                           "tags": sorted(tags)}
    if loaded is not None:  # reported by workers that track it (not by older ones)
        out.update(loaded=sorted(loaded), load_seconds=load)
    return out
