"""``GET /view`` as ComfyUI v0.3.64's ``server.py`` answers it, status codes and content types:

* no ``filename``: 404 (the handler falls through to its last line); an empty one, one that
  starts with ``/`` or contains ``..``: 400; an unknown ``type``: 400;
* a ``subfolder`` leading out of the type's folder: 403;
* the file name is reduced to its base name (``a/b.png`` serves ``b.png``);
* a missing file: 404; else the file, typed by its extension (``mimetypes``; unknown:
  ``application/octet-stream``, and HTML/JS/CSS forced to ``application/octet-stream``), with
  ``Content-Disposition: filename="<name>"``.

The ``preview`` and ``channel`` conversions are not simulated (the connector asks for neither).
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Mapping

from aiohttp import web

#: Content types ComfyUI refuses to serve as such (it forces a download instead).
_FORCED_DOWNLOAD = {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"}


def view_file(query: Mapping[str, str], folders: Mapping[str, str]) -> web.StreamResponse:
    """The answer to ``GET /view?<query>`` with ``folders`` by type (``output``, ``temp``)."""
    if "filename" not in query:
        return web.Response(status=404)
    filename = query["filename"]
    if not filename or filename[0] == "/" or ".." in filename:
        return web.Response(status=400)
    folder = folders.get(query.get("type", "output"))
    if folder is None:
        return web.Response(status=400)
    folder = os.path.abspath(folder)
    if "subfolder" in query:
        inner = os.path.join(folder, query["subfolder"])
        if os.path.commonpath((os.path.abspath(inner), folder)) != folder:
            return web.Response(status=403)
        folder = inner
    filename = os.path.basename(filename)
    path = os.path.join(folder, filename)
    if not os.path.isfile(path):
        return web.Response(status=404)
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if content_type in _FORCED_DOWNLOAD:
        content_type = "application/octet-stream"
    return web.FileResponse(path, headers={"Content-Disposition": f'filename="{filename}"',
                                           "Content-Type": content_type})
