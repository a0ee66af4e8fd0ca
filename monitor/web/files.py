"""Serve a job's output files from the output store (``JOBQUEUE_OUTPUT_URL``).

A fleet shares no disk: the monitor reads a job's files from the same store the workers wrote
them to (S3, MinIO, any fsspec URL), so the dashboard shows images whatever machine made them.
Files are streamed through the monitor, or, with ``JOBQUEUE_OUTPUT_PRESIGN_SECONDS`` > 0 and a
store that can sign (S3), the browser is redirected to a presigned URL.
"""

from __future__ import annotations

import logging
import mimetypes
from typing import Any

from flask import Response, abort, current_app, redirect, stream_with_context

from jobqueue.shared.outputs import OutputStore, is_safe_name

log = logging.getLogger(__name__)

#: Key of the monitor's output store in ``app.extensions`` (built on first use).
EXTENSION = "jobqueue_output_store"


def output_store() -> OutputStore:
    """This app's output store (one per app, built from its settings on first use)."""
    store: OutputStore | None = current_app.extensions.get(EXTENSION)
    if store is None:
        settings = current_app.extensions["jobqueue_monitor"].settings
        store = current_app.extensions[EXTENSION] = OutputStore.from_settings(settings)
    return store


def serve_output(job_id: str, name: str, inline_types: tuple[str, ...]) -> Any:
    """The response for ``/jobs/<job_id>/files/<name>``: 404 for a bad name, an unknown job or
    a missing file (never an exception's text); else the file, streamed or redirected."""
    if not is_safe_name(job_id) or not is_safe_name(name):
        abort(404)
    ctx = current_app.extensions["jobqueue_monitor"]
    if ctx.store.job(job_id, with_events=False) is None:
        abort(404)
    store = output_store()
    try:
        size = store.size(job_id, name)
    except Exception:  # the store is unreachable or refuses: log it, tell the client nothing
        log.warning("output store: cannot read %s/%s", job_id, name, exc_info=True)
        abort(404)
    if size is None:
        abort(404)
    seconds = float(ctx.settings.output_presign_seconds)
    if seconds > 0:
        signed = store.signed_url(job_id, name, seconds)
        if signed:
            return redirect(signed, code=302)
    inline = name.lower().endswith(inline_types)
    mimetype = mimetypes.guess_type(name)[0] or "application/octet-stream"
    response = Response(stream_with_context(store.stream(job_id, name)), mimetype=mimetype)
    response.headers["Content-Length"] = str(size)
    response.headers["Cache-Control"] = "public, max-age=3600"
    if not inline:
        response.headers.set("Content-Disposition", "attachment", filename=name)
    response.headers["Content-Security-Policy"] = "default-src 'none'; img-src 'self'; sandbox"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
