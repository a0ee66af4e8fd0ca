"""Who a worker is: machine, GPU, node name, connectors and queues, fixed at start-up.

The earlier system rebuilt its identity on re-registration and fell back to "unknown",
after which the monitor lost the worker. Here the identity is computed once, frozen, and
sent unchanged with every status event; nothing ever replaces a field with a fallback.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from jobqueue.config import Settings
from jobqueue.shared.routing import gpu_queue, machine_queue, service_queue, worker_queue

_GPU_QUEUE = re.compile(r"^gpu(\d+)$")


def gpu_from_queues(queues: tuple[str, ...] | list[str]) -> int | None:
    """Return the GPU index named by the first ``gpu<N>`` queue, if any."""
    for queue in queues:
        match = _GPU_QUEUE.match(queue.strip())
        if match:
            return int(match.group(1))
    return None


@dataclass(frozen=True)
class WorkerIdentity:
    """A worker's fixed identity."""

    machine_id: str
    gpu: int
    node_name: str
    connectors: tuple[str, ...]
    queues: tuple[str, ...]
    #: Tags the worker declares (``JOBQUEUE_WORKER_TAGS``), matched by jobs' ``requires.tags``.
    tags: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        settings: Settings,
        queues: Iterable[str] = (),
        node_name: str | None = None,
    ) -> WorkerIdentity:
        """Derive the identity from settings and the queues given on the command line."""
        given = tuple(q.strip() for q in queues if q and q.strip())
        gpu = settings.gpu if settings.gpu is not None else gpu_from_queues(given)
        gpu = 0 if gpu is None else gpu
        machine = settings.resolved().machine_id
        all_queues = list(given) or [gpu_queue(gpu)]
        for extra in (
            *(service_queue(s) for s in settings.connectors),
            machine_queue(machine),
            worker_queue(machine, gpu),
            # Every worker delivers webhooks (jobqueue.worker.webhooks); a drain stops that too.
            settings.webhook_queue,
        ):
            if extra and extra not in all_queues:
                all_queues.append(extra)
        return cls(
            machine_id=machine,
            gpu=gpu,
            node_name=node_name or default_node_name(gpu, machine),
            connectors=tuple(settings.connectors),
            queues=tuple(all_queues),
            tags=tuple(settings.worker_tags),
        )

    def as_fields(self) -> dict[str, Any]:
        """The identity as event fields."""
        fields = asdict(self)
        fields["worker"] = fields.pop("node_name")
        fields["connectors"] = list(self.connectors)
        fields["queues"] = list(self.queues)
        fields["tags"] = list(self.tags)
        return fields


def default_node_name(gpu: int, machine_id: str) -> str:
    """``gpu0@<machine>``: one node per GPU, named after its GPU and machine."""
    return f"gpu{gpu}@{machine_id}"


def split_queues(queues: str | Iterable[str] | None) -> list[str]:
    """Normalise Celery's ``-Q`` value (a comma-separated string or a list)."""
    if queues is None:
        return []
    if isinstance(queues, str):
        queues = queues.split(",")
    return [q.strip() for q in queues if q and q.strip()]
