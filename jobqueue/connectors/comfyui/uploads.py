"""The worker's side of a ``comfyui`` job's input images: fetch each, upload it to this
worker's ComfyUI, and point the workflow's loader nodes at the uploaded files.

What ``images`` may hold and what is refused at submit is :mod:`jobqueue.connectors.comfyui.inputs`.
Here, for each entry:

1. **Fetch** (bounded: at most :data:`~jobqueue.connectors.comfyui.inputs.MAX_INPUT_IMAGE_MB`
   and :data:`FETCH_SECONDS`, never past the job's deadline): inline bytes as they are; an
   http(s) URL through :func:`jobqueue.shared.safe_http.guarded_session` (public addresses
   only unless ``JOBQUEUE_INPUT_ALLOWED_NETWORKS`` opens others; redirects followed, each hop
   checked); ``job:<id>/<name>`` or a store URL from the output store
   (:class:`jobqueue.shared.outputs.OutputStore`), wherever outputs live (local or S3). The bytes
   must decode as an image.
2. **Upload** to ``POST /upload/image`` into ``jobqueue/<job id>/`` under ComfyUI's input
   folder, so jobs sharing a server never see each other's inputs. ``overwrite`` is never
   sent: ComfyUI keeps a file of the same content under its name and renames a different one
   (``photo (1).png``), so nothing already there is replaced; the name ComfyUI answers is the
   one used. An ``{"image", "mask"}`` entry then goes through ``POST /upload/mask`` with the
   image as ``original_ref``: ComfyUI writes the image with the mask's alpha as a new file.
3. **Rewrite** each ``LoadImage``/``LoadImageMask`` node naming the entry to
   ``"jobqueue/<job id>/<uploaded name>"`` (its other inputs untouched; the payload itself is
   not changed, so a retry starts from what the user sent).

A bad image fails the job with :class:`~jobqueue.errors.InputImageFailed` naming the image and
the reason; an unreachable ComfyUI raises :class:`~jobqueue.errors.ServiceUnavailable` (retried).
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import time
from collections.abc import Iterable, Mapping
from typing import Any

import requests

from jobqueue.config import Settings
from jobqueue.connectors.base import Job
from jobqueue.connectors.comfyui.inputs import (
    LOADER_NODES,
    MAX_INPUT_BYTES,
    MAX_INPUT_IMAGE_MB,
    UPLOAD_ROOT,
    InputImageError,
    Source,
    describe_image,
    parse_entry,
    plain_name,
)
from jobqueue.connectors.comfyui.rest import ComfyUIRest
from jobqueue.errors import InputImageFailed, TargetRefused
from jobqueue.shared.outputs import OutputStore, is_safe_name
from jobqueue.shared.safe_http import AddressGuard, guarded_session

#: Longest (s) fetching one input image may take.
FETCH_SECONDS = 30.0
#: Timeout (s) of one upload to ComfyUI.
UPLOAD_SECONDS = 60.0
#: Most redirects an input image URL may take.
MAX_REDIRECTS = 3


def job_folder(job_id: str, name: str) -> str:
    """The subfolder (of ComfyUI's input folder) where image ``name`` of job ``job_id`` goes."""
    parent = posixpath.dirname(name)
    return f"{UPLOAD_ROOT}/{job_id}" + (f"/{parent}" if parent else "")


def rewrite(workflow: Mapping[str, Any], uploaded: Mapping[str, str]) -> dict[str, Any]:
    """A copy of ``workflow`` whose loader nodes name the uploaded files (nodes untouched
    otherwise; ``workflow`` itself is not changed)."""
    out: dict[str, Any] = {}
    for node_id, node in workflow.items():
        value = (node.get("inputs") or {}).get("image") if isinstance(node, Mapping) else None
        if isinstance(node, Mapping) and node.get("class_type") in LOADER_NODES and isinstance(value, str) \
                and plain_name(value) in uploaded:
            node = {**node, "inputs": {**node["inputs"], "image": uploaded[plain_name(value)]}}
        out[node_id] = node
    return out


def _bounded(chunks: Iterable[bytes], what: str, deadline: float) -> bytes:
    """The chunks joined, failing past :data:`MAX_INPUT_BYTES` or ``deadline``."""
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        if len(buffer) > MAX_INPUT_BYTES:
            raise InputImageError(f"{what} is larger than {MAX_INPUT_IMAGE_MB:g} MiB")
        if time.monotonic() > deadline:
            raise InputImageError(f"{what} took longer than {FETCH_SECONDS:g} s to fetch")
    return bytes(buffer)


def alpha_mask(data: bytes) -> bytes:
    """The mask as ``/upload/mask`` reads it (its alpha channel): kept when it has alpha, else
    its greyscale turned into alpha (white = 1 = repaint = transparent)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as mask:
        if "A" in mask.getbands() or (mask.mode == "P" and "transparency" in mask.info):
            return data
        alpha = mask.convert("L").point(lambda v: 255 - v)
        rgba = Image.new("RGBA", mask.size, (0, 0, 0, 0))
        rgba.putalpha(alpha)
        out = io.BytesIO()
        rgba.save(out, format="PNG")
        return out.getvalue()


class InputUploader:
    """Fetches a job's input images and uploads them to one ComfyUI (see the module doc)."""

    def __init__(self, settings: Settings, rest: ComfyUIRest) -> None:
        self.settings = settings
        self.rest = rest

    def prepare(self, job: Job, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The workflow to post: ``payload["workflow"]`` with its loader nodes pointing at the
        uploaded ``images`` (the workflow itself when there are none)."""
        workflow: dict[str, Any] = dict(payload["workflow"])
        images = payload.get("images") or {}
        uploaded: dict[str, str] = {}
        for name, value in images.items():
            job.check()
            try:
                uploaded[name] = self._one(job, name, value)
            except InputImageError as exc:
                raise InputImageFailed(f"input image {name!r}: {exc}", {"image": name}) from None
        return rewrite(workflow, uploaded) if uploaded else workflow

    def _one(self, job: Job, name: str, value: Any) -> str:
        """Fetch, check and upload one entry; the name its loader nodes get."""
        source, mask_source = parse_entry(name, value)
        data = self._fetch(job, source, "the image")
        _, width, height, _ = describe_image(data, "the image")
        folder = job_folder(job.id, name)
        base = posixpath.basename(name)
        answer = self._upload("/upload/image", base, data, folder)
        if mask_source is not None:
            mask = self._fetch(job, mask_source, "the mask")
            _, mask_w, mask_h, _ = describe_image(mask, "the mask")
            if (mask_w, mask_h) != (width, height):
                raise InputImageError(f"the mask is {mask_w}x{mask_h}, the image {width}x{height}: they must match")
            stem = os.path.splitext(base)[0]
            ref = {"filename": answer, "subfolder": folder, "type": "input"}
            answer = self._upload("/upload/mask", f"{stem}-masked.png", alpha_mask(mask), folder, ref)
        return f"{folder}/{answer}"

    def _fetch(self, job: Job, source: Source, what: str) -> bytes:
        if source.kind == "inline":
            return source.data
        deadline = time.monotonic() + FETCH_SECONDS
        if job.deadline is not None:
            deadline = min(deadline, job.deadline)
        if source.kind == "url":
            return self._fetch_url(source.ref, what, deadline)
        store = OutputStore.from_settings(self.settings)
        job_id, file_name = source.job if source.kind == "job" else self._store_file(store, source.ref)
        if not is_safe_name(job_id) or not is_safe_name(file_name):
            raise InputImageError(f"{source.ref[:120]!r} is not a job's output file")
        size = store.size(job_id, file_name)
        if size is None:
            raise InputImageError(f"job {job_id} has no output file {file_name!r} in the output store")
        if size > MAX_INPUT_BYTES:
            raise InputImageError(f"job:{job_id}/{file_name} is larger than {MAX_INPUT_IMAGE_MB:g} MiB")
        return _bounded(store.stream(job_id, file_name), f"job:{job_id}/{file_name}", deadline)

    @staticmethod
    def _store_file(store: OutputStore, url: str) -> tuple[str, str]:
        return store_file_of(store, url)

    def _fetch_url(self, url: str, what: str, deadline: float) -> bytes:
        guard = AddressGuard.from_cidrs(self.settings.input_allowed_networks, setting="JOBQUEUE_INPUT_ALLOWED_NETWORKS")
        with guarded_session(guard) as session:
            session.max_redirects = MAX_REDIRECTS
            try:
                left = max(0.1, deadline - time.monotonic())
                with session.get(url, stream=True, timeout=(min(5.0, left), left)) as response:
                    if response.status_code != 200:
                        raise InputImageError(f"GET {url[:120]} answered {response.status_code}")
                    length = response.headers.get("Content-Length", "")
                    if length.isdigit() and int(length) > MAX_INPUT_BYTES:
                        raise InputImageError(f"{url[:120]} is larger than {MAX_INPUT_IMAGE_MB:g} MiB")
                    return _bounded(response.iter_content(1 << 16), url[:120], deadline)
            except TargetRefused as exc:
                raise InputImageError(f"{url[:120]} refused: {exc.message}") from None
            except requests.RequestException as exc:
                cause = exc.__context__ if isinstance(exc.__context__, TargetRefused) else None
                if cause is not None:
                    raise InputImageError(f"{url[:120]} refused: {cause.message}") from None
                raise InputImageError(f"could not fetch {url[:120]}: {type(exc).__name__}: {str(exc)[:200]}") from None

    def _upload(self, route: str, filename: str, data: bytes, folder: str,
                original: Mapping[str, str] | None = None) -> str:
        """POST one file to ComfyUI's ``route``; the name ComfyUI saved it under."""
        form = {"type": "input", "subfolder": folder}
        if original is not None:
            form["original_ref"] = json.dumps(dict(original))
        response = self.rest.request("POST", route, files={"image": (filename, data, "application/octet-stream")},
                                     data=form, timeout=UPLOAD_SECONDS)
        if response.status_code == 413:
            raise InputImageError("ComfyUI refused the upload as too large (413): raise its --max-upload-size")
        if response.status_code != 200:
            raise InputImageError(f"ComfyUI answered {response.status_code} to POST {route}: {response.text[:200]}")
        try:
            name = response.json()["name"]
        except (ValueError, KeyError, TypeError):
            raise InputImageError(f"ComfyUI's answer to POST {route} has no file name: {response.text[:200]}") from None
        return str(name)


def store_file_of(store: OutputStore, url: str) -> tuple[str, str]:
    """``(job id, file name)`` of a store URL; only files of ``store``."""
    root = str(store.fs.unstrip_protocol(store.root)).rstrip("/") + "/"
    if not url.startswith(root):
        raise InputImageError(f"{url[:120]!r} is not a file of the output store ({root})")
    job_id, _, name = url[len(root):].partition("/")
    return job_id, name
