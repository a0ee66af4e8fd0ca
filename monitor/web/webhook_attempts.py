"""The webhook tries of a job, for its page: ``GET /api/jobs/<job_id>/webhooks``.

Workers record every try of a job's webhook in the result backend
(:mod:`jobqueue.shared.webhooks`); this endpoint reads them there, so the page lists
them whatever monitor was running when they happened.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, current_app, jsonify

from jobqueue.shared.masking import mask
from jobqueue.shared.records import result_client
from jobqueue.shared.webhooks import read_attempts
from monitor.web.responses import error_response
from monitor.web.routes import Role, route
from monitor.web.schemas import WEBHOOKS

log = logging.getLogger(__name__)

#: Blueprint the monitor's app factory registers.
bp = Blueprint("webhooks", __name__)


@route(bp, "/api/jobs/<job_id>/webhooks", role=Role.VIEWER, summary="The webhook tries of a job",
       response=WEBHOOKS, errors=(404, 503))
def job_webhooks(job_id: str) -> Any:
    """``{"attempts": [{webhook_id, try, at, url, status_code, error, delivered, worker,
    duration}...]}``, oldest first; 404 for a job the monitor does not know, 503 when the
    result backend cannot be read."""
    ctx = current_app.extensions["jobqueue_monitor"]
    job = ctx.store.job(job_id, with_events=False)
    if job is None:
        return error_response(404, "not_found", f"no job {job_id!r}")
    try:
        attempts = read_attempts(result_client(ctx.celery), job_id)
    except Exception:  # the backend is down: say so, without its exception text
        log.warning("cannot read the webhook tries of job %s", job_id, exc_info=True)
        return error_response(503, "backend_unavailable", "the result backend cannot be read")
    pattern = ctx.settings.secret_keys_pattern
    return jsonify({"attempts": mask(attempts, pattern), "webhook_url": mask((job.get("meta") or {}).get("webhook_url"), pattern)})
