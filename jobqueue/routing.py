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
#: kombu's Redis key separator (``kombu.transport.redis.Channel.sep``, never overridden: stock
#: tooling writes binding keys with it): priority level ``n`` of a queue is ``<queue><sep><n>``.
REDIS_KEY_SEP = "\x06\x16"


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


def redis_queue_keys(queue: str, sep: str = REDIS_KEY_SEP) -> list[str]:
    """The Redis lists that hold ``queue``'s messages, most urgent first (for queue lengths).

    kombu keeps broker level 0 in the list named after the queue, level ``n`` in
    ``<queue><sep><n>``.
    """
    return [f"{queue}{sep}{level}" if level else queue for level in range(BROKER_MAX_PRIORITY + 1)]
