"""Remote control commands a jobqueue worker answers.

* ``connector_status`` (inspect): the worker's identity and every connector's status, so a
  monitor that starts late asks instead of waiting for the next beat. Each status is the one
  last *reported*, with the ``seq`` of the ``connector-status`` event that carried it, so the
  answer merges with the event stream by sequence number.
* ``cancel_job`` (control): cancel a job this worker is running (flag it, tell its service).

Celery keeps its command registry in ``celery.worker.control.Panel``; importing this module
registers ours there, once.
"""

from __future__ import annotations

from typing import Any

from celery.worker.control import control_command, inspect_command

from jobqueue.shared.names import CONTROL_CANCEL_JOB, CONTROL_CONNECTOR_STATUS


def _runtime(state: Any) -> Any:
    return getattr(state.consumer.app, "runtime", None)


@inspect_command(name=CONTROL_CONNECTOR_STATUS)  # type: ignore[untyped-decorator]
def connector_status(state: Any) -> dict[str, Any]:
    """Return identity + connector statuses (with their event ``seq``) of this worker."""
    runtime = _runtime(state)
    if runtime is None:
        return {"error": "jobqueue runtime not started"}
    return dict(runtime.snapshot())


@control_command(name=CONTROL_CANCEL_JOB, args=[("job_id", str)], signature="<job_id>")  # type: ignore[untyped-decorator]
def cancel_job(state: Any, job_id: str) -> dict[str, Any]:
    """Cancel ``job_id`` if it runs here."""
    runtime = _runtime(state)
    if runtime is None or not runtime.cancel(job_id):
        return {"ok": False, "job_id": job_id}
    return {"ok": True, "job_id": job_id}


def register() -> None:
    """Nothing left to do: importing this module registered the commands."""
