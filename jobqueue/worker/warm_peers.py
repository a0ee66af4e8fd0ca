"""Warm routing across workers: what each worker has loaded and whether it is idle, in Redis.

A worker leaves a cold checkpoint's jobs to an idle worker that has it loaded (see
:func:`jobqueue.shared.warm.cold_to_open`), so it must know who that is. Every worker of a
Redis result backend writes its own field of one hash per service
(:func:`jobqueue.shared.records.warm_key`: ``{"loaded": [...], "idle": bool, "at": epoch}``)
when a job starts or ends and on every tick of an :class:`~jobqueue.worker.loop.IntervalLoop`,
and reads the others' on each tick; a field older than :attr:`WarmPeers.stale_after` seconds (a
worker that died) counts for nothing. The hash only holds back a worker's *cold* queues, and
only while the warm worker is idle and consuming the job's queue itself: it never carries a job,
so nothing is lost when it is wrong or out of reach (the grace rule alone applies then).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from jobqueue.shared.records import warm_key
from jobqueue.shared.warm import read_peers
from jobqueue.worker.loop import IntervalLoop
from jobqueue.worker.warm import WarmState

log = logging.getLogger(__name__)

#: The warm hashes expire this long after the last write (a fleet that went away leaves nothing).
HASH_TTL = 3600


class WarmPeers:
    """Publishes this worker's warm state and reads its peers' (see the module doc)."""

    def __init__(self, client: Any, node_name: str, services: tuple[str, ...], warm: WarmState, *,
                 interval: float, on_change: Callable[[], object], clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._me = node_name
        self._services = services
        self._warm = warm
        self._on_change = on_change
        self._clock = clock
        #: Seconds after which a peer's field no longer counts.
        self.stale_after = 3 * interval + 1.0
        self._loop = IntervalLoop(self.tick, interval=interval, name="jobqueue warm peers")

    def publish(self) -> None:
        """Write this worker's field for every service (logs, never raises: best effort)."""
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for service in self._services:
                    entry = {"loaded": list(self._warm.loaded(service)), "idle": self._warm.is_idle(),
                             "at": self._clock()}
                    pipe.hset(warm_key(service), self._me, json.dumps(entry))
                    pipe.expire(warm_key(service), HASH_TTL)
                pipe.execute()
        except Exception:
            log.warning("could not publish what this worker has loaded", exc_info=True)

    def refresh(self) -> bool:
        """Read the peers' fields; True when what idle peers hold changed."""
        changed = False
        now = self._clock()
        for service in self._services:
            raw = self._client.hgetall(warm_key(service)) or {}
            entries: dict[str, Any] = {}
            for worker, value in raw.items():
                try:
                    entries[worker.decode() if isinstance(worker, bytes) else str(worker)] = json.loads(value)
                except (ValueError, TypeError):
                    continue  # a field no worker of ours wrote: ignored
            changed |= self._warm.set_peers(service, read_peers(entries, self._me, now, self.stale_after))
        return changed

    def tick(self) -> None:
        """Publish, read, and have the gate follow when the peers changed."""
        self.publish()
        if self.refresh():
            self._on_change()

    def start(self) -> WarmPeers:
        """Publish now and tick from now on."""
        self.publish()
        self._loop.start()
        return self

    def stop(self) -> None:
        """Stop ticking and remove this worker's fields (its peers stop counting on it at once)."""
        self._loop.stop()
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for service in self._services:
                    pipe.hdel(warm_key(service), self._me)
                pipe.execute()
        except Exception:
            log.warning("could not remove this worker's warm state", exc_info=True)
