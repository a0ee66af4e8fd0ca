"""The orphan book: work a worker handed to its service and must make sure is gone.

A connector writes a prompt into the book *before* it posts it and strikes it out only once
the service has confirmed the prompt ended or is gone. A prompt the worker abandons (stall,
timeout, cancel, shutdown, or a SIGKILL that left no time to say anything) therefore stays in
the book, and the connector removes it from the service (delete when pending, targeted
interrupt when running) as soon as the service answers again, before it takes the next job.
Otherwise the abandoned prompt runs after a thaw, ahead of the retry: the GPU does the work
twice.

The book lives in Redis under one key per worker identity and service
(:func:`jobqueue.shared.records.orphan_book_key`), so it survives a worker restart; without Redis it is kept in memory (enough for tests and one-off runs). Only
the worker named in the key writes it, so once a process has read the key, its own copy is
complete: Redis is read until one read succeeds, and written through on every new entry. A
strike-out reaches Redis with the next write (or :meth:`OrphanBook.flush`): a job's last
round trip is saved, and a strike-out lost with its process only costs the successor one look
at the service's queue, where it finds the prompt gone.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

#: Seconds an entry is kept at most (refreshed on every write): a worker that never comes
#: back must not leave keys behind forever.
BOOK_TTL = 7 * 24 * 3600


class OrphanBook:
    """Prompt id -> facts about it (``url``, ``job_id``, ``at``, ``reason``), in Redis or memory.

    Every method is safe to call from several threads and never raises: when Redis fails, the
    in-memory copy still holds what this process wrote.
    """

    def __init__(self, client: Any = None, key: str = "") -> None:
        self._client = client if key else None
        self._key = key
        self._memory: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        #: True once what Redis held is in ``_memory`` (no Redis: nothing to read).
        self._loaded = self._client is None
        #: Struck out here, still to be deleted from Redis (with the next write).
        self._struck: set[str] = set()

    @property
    def persistent(self) -> bool:
        """True when the book survives a restart (it lives in Redis)."""
        return self._client is not None

    def add(self, prompt_id: str, **facts: Any) -> None:
        """Write ``prompt_id`` down (or update its facts)."""
        with self._lock:
            entry = {**self._memory.get(prompt_id, {}), **facts}
            entry.setdefault("at", time.time())
            self._memory[prompt_id] = entry
            self._struck.discard(prompt_id)
            struck, self._struck = self._struck, set()
        if self._client is not None:
            try:
                pipe = self._client.pipeline(transaction=False)
                if struck:
                    pipe.hdel(self._key, *struck)
                pipe.hset(self._key, prompt_id, json.dumps(entry))
                pipe.expire(self._key, BOOK_TTL)
                pipe.execute()
            except Exception:
                log.warning("orphan book: could not write %s to Redis", prompt_id, exc_info=True)

    def discard(self, prompt_id: str) -> None:
        """Strike ``prompt_id`` out: the service confirmed it is gone. Redis hears of it with
        the next write or :meth:`flush`."""
        with self._lock:
            self._memory.pop(prompt_id, None)
            if self._client is not None:
                self._struck.add(prompt_id)

    def flush(self) -> None:
        """Delete the prompts struck out since the last write from Redis now (on shutdown)."""
        with self._lock:
            struck, self._struck = self._struck, set()
        if self._client is not None and struck:
            try:
                self._client.hdel(self._key, *struck)
            except Exception:
                log.warning("orphan book: could not remove %s from Redis", sorted(struck), exc_info=True)

    def entries(self) -> dict[str, dict[str, Any]]:
        """Every prompt in the book: what Redis held when this process first read it (left by a
        predecessor) plus what this process wrote since. Redis is asked until it answers once,
        not on every call: a job asks before each prompt and the answer cannot change behind
        this process's back."""
        if not self._loaded:
            self._load()
        with self._lock:
            return {k: dict(v) for k, v in self._memory.items()}

    def _load(self) -> None:
        assert self._client is not None
        try:
            raw = self._client.hgetall(self._key) or {}
        except Exception:
            log.warning("orphan book: could not read Redis", exc_info=True)
            return
        with self._lock:
            for field, value in raw.items():
                prompt_id = field.decode() if isinstance(field, bytes) else str(field)
                if prompt_id in self._struck:  # struck out here; Redis has not heard yet
                    continue
                try:
                    facts = json.loads(value)
                except (TypeError, ValueError):
                    facts = {}
                self._memory.setdefault(prompt_id, facts if isinstance(facts, dict) else {})
            self._loaded = True
