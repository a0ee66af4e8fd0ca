"""Reading the WebUI's answers: error bodies in every shape A1111 and Forge send, images, and
whether the ``info`` of a finished request shows what was asked for.

Error bodies (``describe_error``):

* FastAPI's 422: ``{"detail": [{"loc", "msg", "type"[, "input"]}, ...]}`` (pydantic 1 or 2);
* ``api_middleware``'s ``{"error", "detail", "body", "errors"}`` (an exception in a route;
  ``errors`` is ``str(e)``: "CUDA out of memory...", "'no_such_option'");
* Forge's and FastAPI's plain ``{"detail": "..."}`` and ``{"error", "detail", "body", "message"}``.

Honoured (``unknown_sampler`` before posting, against ``/sdapi/v1/samplers``; ``unhonoured``
after the answer): A1111 1.9+ and Forge run an unknown sampler as their default
(``DPM++ 2M``) and drop an unknown ``override_settings.sd_model_checkpoint`` silently, both with
a 200. The rule: a job that names ``sampler_name`` (or ``sampler_index``) fails unless the
answer's ``info.sampler_name`` is that name, possibly followed by a scheduler label ("DPM++ 2M
Karras" runs as "DPM++ 2M"); a job that names a checkpoint fails unless ``info.sd_model_name``
is its name (title, file name or name without extension, folders ignored) or
``info.sd_model_hash`` its hash (a short hash, or the ``[hash]`` of a title).
"""

from __future__ import annotations

import base64
import http.client
import re
from collections.abc import Collection
from typing import Any

#: Scheduler labels a sampler name may end with (``modules/sd_schedulers.py``).
SCHEDULER_LABELS = ("Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform",
                    "KL Optimal", "Align Your Steps", "Simple", "Normal", "DDIM", "Beta", "Turbo")


def image_type(data: bytes) -> str:
    """The MIME type of an encoded image, from its first bytes."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def decode_image(text: str) -> bytes:
    """Bytes of a base64 image as the WebUI sends it (bare or as a ``data:`` URI)."""
    if text.startswith("data:"):
        text = text.split(",", 1)[-1]
    return base64.b64decode(text, validate=False)


def reason(exc: BaseException) -> str:
    """A short reason for a failed connection."""
    text = str(exc) or type(exc).__name__
    for marker in ("Connection refused", "Connection reset", "Name or service not known", "timed out"):
        if marker in text:
            return marker.lower()
    if isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
        return "connection closed by the server"
    return text[:200]


def _detail_list(status: int, detail: list[Any]) -> str:
    parts = []
    for error in detail:
        if not isinstance(error, dict):
            parts.append(str(error))
            continue
        loc = ".".join(str(p) for p in (error.get("loc") or []) if p != "body") or "body"
        parts.append(f"{loc}: {error.get('msg')}")
    return f"the WebUI refused the request ({status}): " + "; ".join(parts)


def describe_error(status: int, body: Any) -> str:
    """One line for a WebUI error answer, whatever its shape (see the module docstring):
    ``the WebUI answered 500: OutOfMemoryError: CUDA out of memory...``."""
    if isinstance(body, dict) and isinstance(body.get("detail"), list):
        return _detail_list(status, body["detail"])
    if isinstance(body, dict):
        name = body.get("error") if isinstance(body.get("error"), str) else ""
        text = next((body[k] for k in ("detail", "errors", "message") if isinstance(body.get(k), str) and body[k]), "")
        if name or text:
            return f"the WebUI answered {status}: " + ": ".join(p for p in (name, text) if p)
    return f"the WebUI answered {status}: {str(body)[:300]}"


def _sampler_honoured(asked: str, ran: str) -> bool:
    if asked == ran:
        return True
    return any(asked == f"{ran} {label}" for label in SCHEDULER_LABELS)


def unknown_sampler(payload: dict[str, Any], names: Collection[str]) -> str | None:
    """Why the sampler the payload names is not among the WebUI's ``names``
    (``/sdapi/v1/samplers``), or None. The WebUI looks a sampler up by its exact name after
    stripping a scheduler label, so an alias is unknown too."""
    asked = payload.get("sampler_name") or payload.get("sampler_index")
    if not isinstance(asked, str) or not asked or not names:
        return None
    if any(_sampler_honoured(asked, name) for name in names):
        return None
    return (f"the WebUI has no sampler {asked!r} (A1111 1.9+ and Forge would run their default sampler "
            f"instead); it has: {', '.join(sorted(names))}")


def _checkpoint_names(asked: str) -> tuple[str, str | None]:
    """The name without folders and extension, and the hash, a checkpoint alias gives."""
    match = re.fullmatch(r"(.*?)\s*\[([0-9a-fA-F]{8,64})\]", asked.strip())
    name, given_hash = (match.group(1), match.group(2)) if match else (asked.strip(), None)
    base = re.split(r"[\\/]", name)[-1]
    stem = re.sub(r"\.(safetensors|ckpt|pt|pth|bin|gguf|sft)$", "", base, flags=re.IGNORECASE)
    if given_hash is None and re.fullmatch(r"[0-9a-fA-F]{10}|[0-9a-fA-F]{64}", stem):
        return stem, stem.lower()
    return stem, given_hash.lower() if given_hash else None


def unhonoured(payload: dict[str, Any], info: dict[str, Any]) -> str | None:
    """Why the answer's ``info`` does not show the sampler or checkpoint the payload asked
    for (the rule of the module docstring), or None when it does (or says nothing)."""
    asked = payload.get("sampler_name") or payload.get("sampler_index")
    ran = info.get("sampler_name")
    if isinstance(asked, str) and asked and isinstance(ran, str) and ran and not _sampler_honoured(asked, ran):
        return (f"the WebUI ran sampler {ran!r} instead of {asked!r}: it does not know {asked!r} "
                "(A1111 1.9+ and Forge fall back to their default sampler silently)")
    overrides = payload.get("override_settings")
    checkpoint = overrides.get("sd_model_checkpoint") if isinstance(overrides, dict) else None
    model, model_hash = info.get("sd_model_name"), info.get("sd_model_hash")
    if isinstance(checkpoint, str) and checkpoint and (model or model_hash):
        stem, given_hash = _checkpoint_names(checkpoint)
        hashes = {str(model_hash).lower()} if model_hash else set()
        if stem != model and not (given_hash and any(h.startswith(given_hash[:10]) for h in hashes)):
            return (f"the WebUI ran checkpoint {model!r} ({model_hash}) instead of {checkpoint!r}: it does not "
                    "have that checkpoint (the WebUI drops an unknown sd_model_checkpoint silently)")
    return None
