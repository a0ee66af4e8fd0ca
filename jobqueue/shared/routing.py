"""Queue names and priorities: where a job goes and in what order it is taken.

* ``<service>`` (e.g. ``simulation``, ``comfyui``): consumed by every worker whose connector
  for that service is healthy. Jobs go here unless pinned.
* ``gpu<N>``: consumed by the GPU-N worker of every machine.
* ``machine.<machine_id>``: consumed by every worker of one machine.
* ``gpu<N>.<machine_id>``: one worker (one GPU of one machine).

Priorities: callers use 0 (lowest) .. 9 (most urgent), default 5, like RabbitMQ. Each caller
priority owns two broker levels (20 in all): the upper one for a workflow's continuation steps,
so a workflow that has started is finished before a later one starts at the same priority.
Redis orders priority steps the other way (0 first), so :func:`broker_priority` flips them
there. See docs/workflows.md.
"""

from __future__ import annotations

from jobqueue.errors import SubmitError

#: Lowest and highest priority a caller may ask for.
MIN_PRIORITY, MAX_PRIORITY = 0, 9
#: Priority of a job that names none.
DEFAULT_PRIORITY = 5
#: Highest broker priority level: two levels per caller priority (Redis and RabbitMQ alike).
BROKER_MAX_PRIORITY = 2 * (MAX_PRIORITY + 1) - 1


def service_queue(service: str) -> str:
    """The queue every worker with ``service`` consumes."""
    return service


def gpu_queue(gpu: int) -> str:
    """The queue of GPU ``gpu`` on every machine."""
    return f"gpu{gpu}"


def machine_queue(machine_id: str) -> str:
    """The queue every worker of ``machine_id`` consumes."""
    return f"machine.{machine_id}"


def worker_queue(machine_id: str, gpu: int) -> str:
    """The queue of exactly one worker: one GPU of one machine."""
    return f"gpu{gpu}.{machine_id}"


def check_priority(priority: int | None) -> int:
    """Return the caller's priority (default :data:`DEFAULT_PRIORITY`) or raise."""
    if priority is None:
        return DEFAULT_PRIORITY
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise SubmitError(f"priority must be an integer {MIN_PRIORITY}..{MAX_PRIORITY}")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise SubmitError(f"priority must be {MIN_PRIORITY}..{MAX_PRIORITY}, got {priority}")
    return priority


def broker_priority(priority: int, *, is_redis: bool, continuation: bool = False) -> int:
    """Translate a caller priority into the broker's level (0..:data:`BROKER_MAX_PRIORITY`).

    Caller priority ``p`` takes level ``2p`` (``2p + 1`` for a workflow's continuation step),
    counted from the top on Redis, which takes 0 first, and from the bottom on RabbitMQ,
    which takes the highest first.
    """
    level = 2 * priority + (1 if continuation else 0)
    return BROKER_MAX_PRIORITY - level if is_redis else level


# -- capability queues (docs/architecture.md, "Capability routing") -------------------------

#: VRAM steps (GiB) with a queue each: a job needing V GiB goes to the smallest step >= V, a
#: worker with T GiB consumes every step <= T.
VRAM_STEPS: tuple[int, ...] = (4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 192, 256, 384, 512, 768, 1024)
#: Characters kept as they are in a capability queue name; others are %-escaped, so a tag like
#: ``customer:acme`` or a model in a sub-folder never contains a broker key separator.
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+=@")


def _escape(name: str) -> str:
    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in name)


def model_queue(service: str, model: str) -> str:
    """The queue of ``service``'s jobs that need ``model``: consumed by workers that have it."""
    return f"{service}.model.{_escape(model)}"


def tag_queue(service: str, tag: str) -> str:
    """The queue of ``service``'s jobs that need ``tag``: consumed by workers declaring it."""
    return f"{service}.tag.{_escape(tag)}"


def vram_step(gib: float) -> int | None:
    """The smallest :data:`VRAM_STEPS` entry >= ``gib`` (None beyond the largest)."""
    return next((step for step in VRAM_STEPS if step >= gib), None)


def vram_queue(service: str, step: int) -> str:
    """The queue of ``service``'s jobs needing up to ``step`` GiB: consumed by workers with more."""
    return f"{service}.vram.{step}"


def is_capability_queue(queue: str, services: tuple[str, ...] | list[str]) -> bool:
    """True for a model, tag or VRAM queue of one of ``services``."""
    return any(queue.startswith(f"{s}.{kind}.") for s in services for kind in ("model", "tag", "vram"))
