"""A running job's progress as its Celery ``PROGRESS`` state, in one round trip.

``Task.update_state`` (Celery's redis backend) reads the stored state first and writes only
when it is not ``SUCCESS`` (so a stray duplicate never overwrites a result), then writes and
publishes: two round trips per progress report. :func:`store_progress` writes the very same
record (Celery's own meta, with the extended fields ``result_extended`` adds) with the same
guard inside one Lua script: one round trip, and the record is published on the key's
channel exactly as Celery publishes it, so ``AsyncResult.get(on_message=...)`` and
:meth:`~jobqueue.client.jobs.JobHandle.wait` see it. A result backend that is not Redis gets
``store_result`` as before.
"""

from __future__ import annotations

from typing import Any

from jobqueue.transport.internals import GUARDED_SET_AND_PUBLISH, result_record


class ProgressState:
    """Writes one backend's ``PROGRESS`` records (one per worker or job; cheap to build)."""

    def __init__(self, backend: Any, state: str) -> None:
        self.backend = backend
        self.state = state
        client: Any = getattr(backend, "client", None)
        # The script reads the stored record as JSON: only then does the guard hold.
        plain_json = getattr(backend, "serializer", None) == "json" and not getattr(backend, "compression", None)
        usable = client is not None and hasattr(client, "register_script") and plain_json
        self._script = client.register_script(GUARDED_SET_AND_PUBLISH) if usable else None

    def record(self, job_id: str, meta: dict[str, Any], request: Any) -> Any:
        """The encoded record Celery's ``update_state`` would store."""
        return self.backend.encode(result_record(self.backend, job_id, meta, self.state, request))

    def store(self, job_id: str, meta: dict[str, Any], request: Any) -> bool:
        """Store ``meta`` as the job's progress; False when a SUCCESS record was there."""
        if self._script is None:
            self.backend.store_result(job_id, meta, self.state, request=request)
            return True
        expires = int(getattr(self.backend, "expires", None) or 0)
        key = self.backend.get_key_for_task(job_id)  # public KeyValueStoreBackend API
        return bool(self._script(keys=[key], args=[self.record(job_id, meta, request), expires]))
