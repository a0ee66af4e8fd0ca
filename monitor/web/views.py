"""The dashboard's pages: fleet, jobs, one job, stats, and the client test page.

The server renders only the page shell; every number on a page comes from the REST API and the
``/ws`` websocket (snapshot, then deltas), so a page opened late shows exactly what a page open
all along shows. Nothing user-supplied is rendered into HTML here except through Jinja's
autoescaping; the browser code builds its DOM with ``textContent`` only.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from flask import Blueprint, abort, current_app, jsonify, render_template

from jobqueue.client.services import payload_schema, service_examples
from jobqueue.shared.outputs import is_safe_name
from monitor.web.files import local_source, send_source, serve_output
from monitor.web.responses import error_response
from monitor.web.routes import Role, route

#: Blueprint the monitor's app factory registers when this module exists. Its templates and
#: static files live at the package's top (``monitor/templates``, ``monitor/static``), one level
#: above this module.
bp = Blueprint(
    "views",
    __name__,
    # The pages' files live in the monitor package (monitor/templates, monitor/static).
    template_folder="../templates",
    static_folder="../static",
    static_url_path="/ui-static",
)


@bp.app_context_processor
def page_settings() -> dict[str, Any]:
    """What every page's shell tells its scripts: how long an offline worker stays in the fleet
    view (:mod:`monitor.web.offline`)."""
    return {"hide_offline_after": current_app.extensions["jobqueue_monitor"].settings.monitor_hide_offline_after}


@route(bp, "/api/services/<name>/schema", role=Role.VIEWER, summary="JSON schema of a service's job payload",
       response={"type": "object"}, errors=(404,))
def service_schema(name: str) -> Any:
    """The JSON schema of ``name``'s job payload (its connector's pydantic models): the client
    page lists the fields and checks a payload against it before sending; the server checks
    again at submit. 404 for a service no connector provides here."""
    schema = payload_schema(name)
    if schema is None:
        return error_response(404, "not_found", f"no connector for service {name!r} on this monitor")
    return jsonify(schema)


@route(bp, "/", role=Role.VIEWER, summary="The fleet page", content="text/html", page=True)
def fleet() -> str:
    """Machines, their workers (one per GPU) and each connector's status."""
    return render_template("fleet.html", page="fleet")


@route(bp, "/jobs", role=Role.VIEWER, summary="The jobs page", content="text/html", page=True)
def jobs() -> str:
    """Pending, active, finished and failed jobs with filters and search."""
    return render_template("jobs.html", page="jobs")


@route(bp, "/jobs/<job_id>", role=Role.VIEWER, summary="One job's page", content="text/html", page=True,
       errors=(404,))
def job(job_id: str) -> str:
    """One job: its state, payload summary, outputs and full event timeline."""
    return render_template("job.html", page="job", job_id=job_id)


@route(bp, "/stats", role=Role.VIEWER, summary="The stats page", content="text/html", page=True)
def stats() -> str:
    """Completion times per service, throughput, failure patterns and queue depths."""
    return render_template("stats.html", page="stats")


@route(bp, "/client", role=Role.VIEWER, summary="The client test page", content="text/html", page=True)
def client() -> str:
    """The client test page: submit a batch of jobs and follow them live."""
    examples = service_examples()
    return render_template(
        "client.html",
        page="client",
        services=list(examples),
        examples=examples,
    )


#: Output files the pages may show inline (images, video, audio); anything else is a download.
INLINE_TYPES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".mp4", ".webm", ".wav", ".mp3", ".flac", ".ogg",
                ".opus", ".m4a")


def output_file(output_dir: str, job_id: str, name: str) -> Path | None:
    """The regular file ``<output_dir>/<job_id>/<name>``, or None.

    Only a plain name directly inside the job's own folder: no dot-names (``.``, ``..``), no
    separators, no symlink at either level (the check uses ``lstat`` and the file is opened
    with ``O_NOFOLLOW``), nothing but a regular file.
    """
    if not is_safe_name(job_id) or not is_safe_name(name):
        return None
    folder = Path(output_dir).resolve() / job_id
    path = folder / name
    try:
        if not stat.S_ISDIR(folder.lstat().st_mode) or not stat.S_ISREG(path.lstat().st_mode):
            return None
    except (OSError, ValueError):
        return None
    return path


@route(bp, "/jobs/<job_id>/files/<name>", role=Role.VIEWER, summary="An output file of a job",
       content="application/octet-stream", errors=(404,))
def job_file(job_id: str, name: str) -> Any:
    """An output file a worker on this host wrote to ``output_dir/<job id>/<name>``.

    With ``JOBQUEUE_OUTPUT_URL`` set, read from the output store (:mod:`monitor.web.files`), so
    any machine's files are served; else only where the monitor shares the workers' disk. Only files of a
    job the store knows are served (see :func:`output_file`). Either way with ``Range`` and
    validators (:mod:`monitor.web.files`); the response is sandboxed by CSP so an SVG or HTML
    "image" cannot run script on the monitor's origin.
    """
    context = current_app.extensions["jobqueue_monitor"]
    if context.settings.output_url:
        # A shared output store (S3...): serve from it, whatever machine wrote the file.
        return serve_output(job_id, name, INLINE_TYPES)
    path = output_file(context.settings.output_dir, job_id, name)
    if path is None or context.store.job(job_id, with_events=False) is None:
        abort(404)
    source = local_source(path)
    if source is None:
        abort(404)
    return send_source(source, name, inline=name.lower().endswith(INLINE_TYPES))
