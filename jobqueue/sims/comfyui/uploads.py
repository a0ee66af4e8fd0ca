"""ComfyUI's upload routes, ``POST /upload/image`` and ``POST /upload/mask`` (``server.py`` of
v0.3.64), as unkind as the real ones.

Both take a multipart form: ``image`` (the file; its file name is the name it is saved under),
``type`` (``input``, the default; ``temp``; ``output``; anything else makes ComfyUI's handler
raise: a 500), ``subfolder`` (joined after ``normpath``; a path leaving the folder is a 400)
and ``overwrite`` (``"true"``/``"1"`` replace a file of that name). Without ``overwrite`` a
name that exists is kept when the file there has the same SHA-256 (nothing written, the same
name answered), else the upload is renamed ``name (1).png``, ``name (2).png``... The answer is
``{"name", "subfolder", "type"}`` with the subfolder as sent. Nothing checks that the file is
an image: a broken one is found only when a ``LoadImage`` runs.

``/upload/mask`` also takes ``original_ref`` (JSON ``{"filename", "subfolder", "type"}``, the
type defaulting to ``output`` and overridden by an annotation in the file name) and saves the
original image with the uploaded mask's alpha channel as its own, as a PNG, under the
uploaded file's name. When the original cannot be found, or its path is refused, nothing is
saved, yet the answer is the same 200 (ComfyUI drops the save function's refusal); a missing
``original_ref`` is a 500.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from jobqueue.sims.comfyui.inputs import annotated_filepath

#: ``(file field, form, path to write)``: how an upload is written.
SaveFunction = Callable[[Any, Mapping[str, Any], str], None]


def _dir_by_type(kind: Any, folders: Mapping[str, str]) -> tuple[str, str]:
    kind = "input" if kind is None else kind
    if kind not in ("input", "temp", "output"):
        # ComfyUI's get_dir_by_type leaves its folder unbound: the handler raises.
        raise web.HTTPInternalServerError(text="500 Internal Server Error\n\nServer got itself in trouble")
    return os.path.abspath(folders[kind]), kind


def _same_file(path: str, data: bytes) -> bool:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest() == hashlib.sha256(data).hexdigest()


def image_upload(post: Mapping[str, Any], folders: Mapping[str, str],
                 save: SaveFunction | None = None) -> web.Response:
    """ComfyUI's ``image_upload``: where the file goes, its name, and the JSON answer."""
    image = post.get("image")
    overwrite = post.get("overwrite")
    upload_dir, kind = _dir_by_type(post.get("type"), folders)
    if image is None or not hasattr(image, "file") or not image.filename:
        return web.Response(status=400)
    filename = str(image.filename)
    subfolder = str(post.get("subfolder", ""))
    full_folder = os.path.join(upload_dir, os.path.normpath(subfolder))
    filepath = os.path.abspath(os.path.join(full_folder, filename))
    if os.path.commonpath((upload_dir, filepath)) != upload_dir:
        return web.Response(status=400)
    os.makedirs(full_folder, exist_ok=True)
    image.file.seek(0)
    data = image.file.read()
    stem, ext = os.path.splitext(filename)
    duplicate = False
    if overwrite not in ("true", "1"):
        number = 1
        while os.path.exists(filepath):
            if _same_file(filepath, data):
                duplicate = True
                break
            filename = f"{stem} ({number}){ext}"
            filepath = os.path.join(full_folder, filename)
            number += 1
    if not duplicate:
        if save is not None:
            image.file.seek(0)
            save(image, post, filepath)
        else:
            with open(filepath, "wb") as fh:
                fh.write(data)
    return web.json_response({"name": filename, "subfolder": subfolder, "type": kind})


def mask_saver(folders: Mapping[str, str]) -> SaveFunction:
    """``upload_mask``'s save function: the original image with the mask's alpha, as PNG."""

    def save(image: Any, post: Mapping[str, Any], filepath: str) -> None:
        from PIL import Image
        from PIL.PngImagePlugin import PngInfo

        ref = json.loads(post.get("original_ref"))  # type: ignore[arg-type]  # None: TypeError, a 500
        filename, kind = annotated_filepath(ref["filename"])
        if not filename or filename[0] == "/" or ".." in filename:
            return
        if kind is None:
            kind = ref.get("type", "output")
        if kind not in folders:
            return
        output_dir = os.path.abspath(folders[kind])
        if ref.get("subfolder", "") != "":
            full = os.path.join(output_dir, ref["subfolder"])
            if os.path.commonpath((os.path.abspath(full), output_dir)) != output_dir:
                return
            output_dir = full
        original_path = os.path.join(output_dir, filename)
        if not os.path.isfile(original_path):
            return
        with Image.open(original_path) as original:
            metadata = PngInfo()
            for key, value in getattr(original, "text", {}).items():
                metadata.add_text(key, value)
            rgba = original.convert("RGBA")
            with Image.open(image.file) as mask:
                rgba.putalpha(mask.convert("RGBA").getchannel("A"))
            rgba.save(filepath, compress_level=4, pnginfo=metadata)

    return save


def routes(prefix: str, folders: Mapping[str, str]) -> list[web.RouteDef]:
    """The two upload routes under ``prefix`` (``""`` and ``"/api"``)."""

    async def upload_image(request: web.Request) -> web.Response:
        return image_upload(await request.post(), folders)

    async def upload_mask(request: web.Request) -> web.Response:
        return image_upload(await request.post(), folders, mask_saver(folders))

    return [web.post(prefix + "/upload/image", upload_image), web.post(prefix + "/upload/mask", upload_mask)]
