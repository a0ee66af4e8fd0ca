"""A job's payload as it was submitted, for its page: ``GET /api/jobs/<job_id>/payload``.

Events carry only a masked summary of a payload; the whole payload lives in the task's kwargs in
the result backend. The job page reads it here to offer a ComfyUI job's workflow as an API-format
JSON file (to open in ComfyUI again). Values under secret-looking keys are masked, as everywhere
the monitor shows a payload.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, current_app, jsonify

from jobqueue.shared.masking import mask
from monitor.web.responses import error_response
from monitor.web.routes import Role, route

log = logging.getLogger(__name__)

#: Blueprint the monitor's app factory registers.
bp = Blueprint("job_payload", __name__)


@route(bp, "/api/jobs/<job_id>/payload", role=Role.VIEWER, summary="The job's payload as submitted (secrets masked)",
       errors=(404, 409, 503))
def job_payload(job_id: str) -> Any:
    """``{"service", "payload"}`` (secrets masked); 404 for a job the monitor does not know,
    409 when the result backend no longer holds its kwargs, 503 when it cannot be read."""
    ctx = current_app.extensions["jobqueue_monitor"]
    job = ctx.store.job(job_id, with_events=False)
    if job is None:
        return error_response(404, "not_found", f"no job {job_id!r}")
    try:
        kwargs = ctx.celery.AsyncResult(job_id).kwargs
    except Exception:  # the backend is down: say so, without its exception text
        log.warning("cannot read the kwargs of job %s", job_id, exc_info=True)
        return error_response(503, "backend_unavailable", "the result backend cannot be read")
    if not isinstance(kwargs, dict) or "payload" not in kwargs:
        return error_response(409, "payload_unknown", f"the result backend no longer holds job {job_id}'s payload")
    pattern = ctx.settings.secret_keys_pattern
    return jsonify({"service": kwargs.get("service") or job["service"], "payload": mask(kwargs["payload"], pattern)})
