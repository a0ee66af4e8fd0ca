"""Serve a job's output files: from the monitor's disk or from the output store.

A fleet shares no disk: with ``JOBQUEUE_OUTPUT_URL`` set the monitor reads a job's files from
the same store the workers wrote them to (S3, MinIO, any fsspec URL), so the dashboard shows
outputs whatever machine made them; else it reads ``output_dir/<job id>/<name>`` on its own
host. With ``JOBQUEUE_OUTPUT_PRESIGN_SECONDS`` > 0 and a store that can sign (S3), the browser
is redirected to a presigned URL instead.

Both sources answer the same way, so a browser can play and seek a video and revalidate what it
cached: ``Accept-Ranges: bytes``, one ``Range`` answered ``206`` with only those bytes read
(``416`` when it lies past the end), a strong ``ETag`` and ``Last-Modified`` with ``304`` on
``If-None-Match`` / ``If-Modified-Since``, ``If-Range`` honoured, and the Content-Type of the
kind (:func:`jobqueue.shared.outputs.content_type`). Files stream in chunks, never whole.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from flask import Response, abort, current_app, redirect, request
from werkzeug.http import http_date, is_resource_modified, parse_date, unquote_etag

from jobqueue.shared.outputs import CHUNK_SIZE, OutputStore, content_type, is_safe_name

log = logging.getLogger(__name__)

#: Key of the monitor's output store in ``app.extensions`` (built on first use).
EXTENSION = "jobqueue_output_store"
#: The file responses' own CSP: an SVG or HTML "image" opened directly cannot run script.
FILE_CSP = "default-src 'none'; img-src 'self'; media-src 'self'; sandbox"


@dataclass
class Source:
    """One file to serve: its size, validators and a reader of a byte range."""

    size: int
    modified: float | None
    etag: str
    #: ``read(start, length)``: the bytes of that range, chunk by chunk.
    read: Callable[[int, int], Iterator[bytes]]
    #: Called when the response is done (closes an open file).
    close: Callable[[], None] = lambda: None


def output_store() -> OutputStore:
    """This app's output store (one per app, built from its settings on first use)."""
    store: OutputStore | None = current_app.extensions.get(EXTENSION)
    if store is None:
        settings = current_app.extensions["jobqueue_monitor"].settings
        store = current_app.extensions[EXTENSION] = OutputStore.from_settings(settings)
    return store


def serve_output(job_id: str, name: str, inline_types: tuple[str, ...]) -> Any:
    """The response for ``/jobs/<job_id>/files/<name>`` from the output store: 404 for a bad
    name, an unknown job or a missing file (never an exception's text); else the file (or a
    range of it), streamed, or a redirect to a presigned URL."""
    if not is_safe_name(job_id) or not is_safe_name(name):
        abort(404)
    ctx = current_app.extensions["jobqueue_monitor"]
    if ctx.store.job(job_id, with_events=False) is None:
        abort(404)
    store = output_store()
    try:
        info = store.info(job_id, name)
    except Exception:  # the store is unreachable or refuses: log it, tell the client nothing
        log.warning("output store: cannot read %s/%s", job_id, name, exc_info=True)
        abort(404)
    if info is None:
        abort(404)
    seconds = float(ctx.settings.output_presign_seconds)
    if seconds > 0:
        signed = store.signed_url(job_id, name, seconds)
        if signed:
            return redirect(signed, code=302)
    size, modified, tag = info
    source = Source(size, modified, tag, lambda start, length: store.stream(job_id, name, start, length))
    return send_source(source, name, inline=name.lower().endswith(inline_types))


def local_source(path: Path) -> Source | None:
    """A file on this host (opened without following a symlink), or None when it cannot be."""
    try:
        handle: BinaryIO = os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")
    except OSError:
        return None
    stat = os.fstat(handle.fileno())

    def read(start: int, length: int) -> Iterator[bytes]:
        handle.seek(start)
        left = length
        while left > 0:
            chunk = handle.read(min(CHUNK_SIZE, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk

    return Source(stat.st_size, stat.st_mtime, f"{stat.st_size:x}-{stat.st_mtime_ns:x}", read, handle.close)


def send_source(source: Source, name: str, *, inline: bool) -> Response:
    """The (conditional, ranged) response serving ``source`` as the file ``name``."""
    headers = {"ETag": f'"{source.etag}"', "Accept-Ranges": "bytes", "Cache-Control": "public, max-age=3600",
               "Content-Security-Policy": FILE_CSP, "X-Content-Type-Options": "nosniff"}
    if source.modified is not None:
        headers["Last-Modified"] = http_date(source.modified)
    if not is_resource_modified(request.environ, etag=source.etag,
                                last_modified=headers.get("Last-Modified")):
        source.close()
        return Response(status=304, headers=headers)
    start, length, status = 0, source.size, 200
    wanted = _range(source, headers)
    if isinstance(wanted, str):  # "unsatisfiable"
        source.close()
        headers["Content-Range"] = f"bytes */{source.size}"
        return Response(status=416, headers=headers)
    if wanted is not None:
        start, stop = wanted
        length, status = stop - start, 206
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{source.size}"
    response = Response(source.read(start, length), status=status,
                        content_type=content_type(name), headers=headers)
    response.headers["Content-Length"] = str(length)
    if not inline:
        response.headers.set("Content-Disposition", "attachment", filename=name)
    response.call_on_close(source.close)
    return response


def _range(source: Source, headers: dict[str, str]) -> tuple[int, int] | str | None:
    """The one byte range ``[start, stop)`` the request asks for, ``"unsatisfiable"``, or None
    for the whole file (no Range, several ranges, or an ``If-Range`` the file no longer matches)."""
    wanted = request.range
    if wanted is None or len(wanted.ranges) != 1 or not _if_range_matches(source, headers):
        return None
    found = wanted.range_for_length(source.size)
    if found is None:
        return "unsatisfiable"
    return found


def _if_range_matches(source: Source, headers: dict[str, str]) -> bool:
    """False when ``If-Range`` names another version of the file (then it is sent whole)."""
    value = request.headers.get("If-Range", "").strip()
    if not value:
        return True
    if value.startswith(('"', "W/")):
        tag, weak = unquote_etag(value)
        return not weak and tag == source.etag
    date = parse_date(value)
    return date is not None and "Last-Modified" in headers and http_date(date) == headers["Last-Modified"]
