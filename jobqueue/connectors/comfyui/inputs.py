"""Input images of a ``comfyui`` job: what the payload's ``images`` may hold, and the rules
checked at submit (pure: no I/O; the worker's side is :mod:`jobqueue.connectors.comfyui.uploads`).

``images`` maps the name a ``LoadImage`` / ``LoadImageMask`` node uses (its ``image`` input,
``"photo.png"`` or ``"photo.png [input]"``) to where the image comes from:

* ``data:image/png;base64,...`` or bare base64: the bytes themselves;
* ``http://`` / ``https://``: fetched by the worker through the SSRF-safe session
  (public addresses only, ``JOBQUEUE_INPUT_ALLOWED_NETWORKS`` opens others);
* ``job:<job id>/<file name>``: an output file of an earlier job, read from the output store;
  so is an output's store URL (``s3://bucket/prefix/<job id>/<name>``, ``file:///...``), which
  is what ``{"$prev": "files.0.url"}`` gives a workflow step;
* ``{"$prev": "files.0.url"}`` in a workflow step: the previous step's first output file;
* ``{"image": <source>, "mask": <source>}``: the image with the mask painted into its alpha
  channel by ComfyUI's ``/upload/mask`` (where the mask's alpha is 0, ``LoadImage``'s MASK is
  1: the area to repaint). A mask without an alpha channel is read as greyscale, white = 1.

Refused at submit (:func:`check_images`): a name no loader node uses; a loader node naming an
image ``images`` lacks (once ``images`` is given); a name under ``jobqueue/`` (the worker's
per-job upload folders: a job never names another's inputs); an inline image that is not
base64, is larger than :data:`MAX_INPUT_IMAGE_MB` or does not decode; a source of no known kind.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from jobqueue.shared.steps import PREV

#: Node classes whose ``image`` input names a file of ComfyUI's input folder.
LOADER_NODES = ("LoadImage", "LoadImageMask")
#: Largest input image (fetched, read from the store or inline), in MiB.
MAX_INPUT_IMAGE_MB = 50.0
MAX_INPUT_BYTES = int(MAX_INPUT_IMAGE_MB * 2**20)
#: Most pixels an input image may have (8192 x 8192): a small file cannot unpack into gigabytes.
MAX_INPUT_PIXELS = 8192 * 8192
#: Most input images one job may bring.
MAX_INPUT_IMAGES = 64
#: The folder (under ComfyUI's input folder) where the worker uploads each job's images.
UPLOAD_ROOT = "jobqueue"
_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[^;,]*)*)(;base64)?,", re.IGNORECASE)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_INPUT_SUFFIX = " [input]"


class InputImageError(ValueError):
    """An input image (or its name) is not usable; the message says which and why."""


@dataclass(frozen=True)
class Source:
    """Where one image comes from: ``kind`` is ``inline``, ``url``, ``job`` or ``store``;
    ``data`` the bytes (inline), ``ref`` the URL, ``(job id, file name)`` or store URL."""

    kind: str
    ref: str = ""
    data: bytes = b""
    job: tuple[str, str] = ("", "")


def plain_name(name: str) -> str:
    """The name a node uses without ComfyUI's ``[input]`` annotation."""
    return name[: -len(_INPUT_SUFFIX)] if name.endswith(_INPUT_SUFFIX) else name


def check_name(name: Any) -> str:
    """``name`` if it can name an input image (a relative path inside the input folder, not
    under the upload folder, no other folder's annotation); else :class:`InputImageError`."""
    if not isinstance(name, str) or not name.strip():
        raise InputImageError("an image name must be a non-empty string")
    plain = plain_name(name)
    if len(plain) > 200 or plain.startswith("/") or "\\" in plain or "\x00" in plain \
            or any(part in ("", ".", "..") for part in plain.split("/")):
        raise InputImageError(f"{name!r} is not a file name inside ComfyUI's input folder")
    if plain.endswith(("[output]", "[temp]")):
        raise InputImageError(f"{name!r} names a file of another folder; input images go to the input folder")
    if plain.split("/")[0] == UPLOAD_ROOT:
        raise InputImageError(f"{name!r} is under {UPLOAD_ROOT}/, where the worker keeps each job's uploaded "
                              "images: a job may not name another job's inputs")
    return plain


def loader_uses(workflow: Mapping[str, Any]) -> Iterator[tuple[str, str, str]]:
    """``(node id, class type, plain image name)`` of every loader node with a literal name."""
    for node_id, node in workflow.items():
        if not isinstance(node, Mapping) or node.get("class_type") not in LOADER_NODES:
            continue
        value = (node.get("inputs") or {}).get("image")
        if isinstance(value, str):
            yield str(node_id), str(node["class_type"]), plain_name(value)


def parse_source(value: Any, where: str) -> Source:
    """The :class:`Source` ``value`` spells (inline images decoded and checked)."""
    if not isinstance(value, str) or not value.strip():
        raise InputImageError(f"{where}: expected a data URL, base64, an http(s) URL or job:<id>/<file>, "
                              f"got {type(value).__name__}")
    text = value.strip()
    if text.startswith(("http://", "https://")):
        return Source("url", ref=text)
    if text.startswith("job:"):
        job_id, _, name = text[4:].partition("/")
        if not job_id or not name or "/" in name or name.startswith(".") or ".." in name:
            raise InputImageError(f"{where}: {text[:80]!r} is not job:<job id>/<file name>")
        return Source("job", ref=text, job=(job_id, name))
    if _SCHEME.match(text):
        return Source("store", ref=text)
    data_url = _DATA_URL.match(text)
    if data_url is not None:
        if not data_url.group(3):
            raise InputImageError(f"{where}: a data URL must be base64 (data:image/png;base64,...)")
        text = text[data_url.end():]
    data = decode_base64(text, where)
    describe_image(data, where)
    return Source("inline", data=data)


def decode_base64(text: str, where: str) -> bytes:
    """The bytes of base64 ``text`` (whitespace ignored), at most :data:`MAX_INPUT_BYTES`."""
    compact = "".join(text.split())
    if len(compact) * 3 // 4 > MAX_INPUT_BYTES:
        raise InputImageError(f"{where}: the image is larger than {MAX_INPUT_IMAGE_MB:g} MiB")
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InputImageError(f"{where}: not base64, a data URL, an http(s) URL or job:<id>/<file>") from None


def describe_image(data: bytes, where: str) -> tuple[str, int, int, bool]:
    """``(format, width, height, has alpha)`` of an image that decodes whole; else
    :class:`InputImageError` saying why (too large, too many pixels, not an image, broken)."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > MAX_INPUT_BYTES:
        raise InputImageError(f"{where}: the image is larger than {MAX_INPUT_IMAGE_MB:g} MiB")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > MAX_INPUT_PIXELS:
                raise InputImageError(f"{where}: {width}x{height} pixels is more than {MAX_INPUT_PIXELS} pixels")
            img.load()
            alpha = "A" in img.getbands() or (img.mode == "P" and "transparency" in img.info)
            return str(img.format or "?"), width, height, alpha
    except UnidentifiedImageError:
        raise InputImageError(f"{where}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputImageError(f"{where}: the image does not decode: {exc}") from None


def is_placeholder(value: Any) -> bool:
    """A workflow step's ``{"$prev": path}``: filled in from the previous step before the step
    runs (and checked then)."""
    return isinstance(value, Mapping) and len(value) == 1 and PREV in value


def parse_entry(name: str, value: Any) -> tuple[Source, Source | None]:
    """An ``images`` entry: its image source and, for ``{"image", "mask"}``, its mask source."""
    where = f"images[{name!r}]"
    if is_placeholder(value):
        raise InputImageError(f"{where}: {{\"{PREV}\": ...}} is filled in only in a workflow step after the first")
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"image", "mask"})
        if unknown or "image" not in value or "mask" not in value:
            raise InputImageError(f"{where}: an object entry is {{\"image\": <source>, \"mask\": <source>}}"
                                  + (f" (unknown: {unknown})" if unknown else ""))
        return parse_source(value["image"], f"{where}.image"), parse_source(value["mask"], f"{where}.mask")
    return parse_source(value, where), None


def check_images(workflow: Mapping[str, Any], images: Any) -> dict[str, Any]:
    """The ``images`` of a payload, checked against its workflow (see the module doc); keys
    come back without ``[input]``. Raises :class:`InputImageError` naming every problem."""
    problems: list[str] = []
    for node_id, class_type, named in loader_uses(workflow):
        if named.split("/")[0] == UPLOAD_ROOT:
            problems.append(f"node {node_id} ({class_type}) names {named!r}, under {UPLOAD_ROOT}/ where the worker "
                            "keeps each job's uploaded images: a job may not name another job's inputs")
    if images is None:
        if problems:
            raise InputImageError("; ".join(problems))
        return {}
    if not isinstance(images, Mapping):
        raise InputImageError("'images' must be an object of image name -> source")
    if len(images) > MAX_INPUT_IMAGES:
        raise InputImageError(f"'images' holds {len(images)} images; at most {MAX_INPUT_IMAGES}")
    checked: dict[str, Any] = {}
    for name, value in images.items():
        try:
            plain = check_name(name)
            if not is_placeholder(value):
                parse_entry(plain, value)
            checked[plain] = value
        except InputImageError as exc:
            problems.append(str(exc))
    uses = list(loader_uses(workflow))
    used = {name for _, _, name in uses}
    for name in checked:
        if name not in used:
            known = sorted(used)
            problems.append(f"images[{name!r}]: no LoadImage or LoadImageMask node uses it "
                            + (f"(they use {known})" if known else "(the workflow has none with a file name)"))
    for node_id, class_type, name in uses:
        if checked and name not in checked and name.split("/")[0] != UPLOAD_ROOT:
            problems.append(f"node {node_id} ({class_type}) names {name!r}, which 'images' does not have")
    if problems:
        raise InputImageError("; ".join(dict.fromkeys(problems)))
    return checked
