"""``GET /api/jobs/<id>/preview``: the latest live preview of a running job.

Workers store only the latest preview per job in the result backend's Redis
(:mod:`jobqueue.shared.previews`) and announce each one as ``progress.preview`` (its sequence number)
in the job's ``task-progress`` events; the job page and the worker card fetch this route when
that number changes. The image is served as stored, never cached by the browser.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app

from jobqueue.shared.previews import RedisPreviewStore
from jobqueue.shared.records import result_client
from monitor.web.routes import Role, route

bp = Blueprint("previews", __name__)


def _error(status: int, code: str, message: str) -> Response:
    from monitor.web.responses import error_response

    return error_response(status, code, message)


@route(bp, "/api/jobs/<job_id>/preview", role=Role.VIEWER, summary="The latest live preview image of a running job",
       content="image/*", errors=(404, 503))
def preview(job_id: str) -> Any:
    """200 with the image (``Content-Type`` as stored, ``X-Preview-Seq`` its number), 404 when
    the job has no preview (none sent, expired, or a non-Redis result backend), 503 when the
    result backend cannot be read."""
    context = current_app.extensions["jobqueue_monitor"]
    client = result_client(context.celery)
    if client is None:
        return _error(404, "not_found", "previews need a Redis result backend")
    try:
        found = RedisPreviewStore(client).get(job_id)
    except Exception as exc:
        return _error(503, "backend_unavailable", f"cannot read the preview: {exc}")
    if found is None:
        return _error(404, "not_found", f"no preview for job {job_id!r}")
    response = Response(found.data, mimetype=found.mime)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Preview-Seq"] = str(found.seq)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
