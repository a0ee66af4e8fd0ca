"""Checking an ``a1111`` job payload at submit time, so that nothing bad is ever enqueued.

A payload is the WebUI's own txt2img / img2img request body plus ``mode`` (``txt2img``, the
default, or ``img2img``) and jobqueue's ``timeout`` / ``stall_timeout`` / ``node_timeout``. Each field must have the
type of the WebUI's request model (:mod:`jobqueue.connectors.a1111_fields`; JSON types, no
coercion: ``"20"`` is not a step count) and lie within the WebUI's UI limits. Fields the
connector owns (``force_task_id``, ``send_images``...) are refused.
"""

from __future__ import annotations

import math
from typing import Any

from jobqueue.connectors.a1111_fields import (
    BOOL,
    DICT,
    FLOAT,
    INT,
    LIST,
    RANGES,
    ROUTES,
    STR,
    STR_LIST,
    all_field_names,
    request_fields,
)
from jobqueue.errors import InvalidPayloadError

#: Fields jobqueue adds to the request itself: a payload may not set them.
OWNED = {
    "force_task_id": "jobqueue sets it to follow the job",
    "send_images": "jobqueue needs the images in the answer",
    "include_init_images": "jobqueue does not store input images",
}
#: Payload fields of jobqueue's own (not sent to the WebUI).
OWN_FIELDS = ("mode", "timeout", "stall_timeout", "node_timeout")

_TYPE_NAMES = {INT: "an integer", FLOAT: "a number", STR: "a string", BOOL: "true or false", LIST: "a list",
               STR_LIST: "a list of strings", DICT: "an object"}


def _type_ok(kind: str, value: Any) -> bool:
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == FLOAT:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == STR:
        return isinstance(value, str)
    if kind == BOOL:
        return isinstance(value, bool)
    if kind == LIST:
        return isinstance(value, list)
    if kind == STR_LIST:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    if kind == DICT:
        return isinstance(value, dict)
    return True


def _positive(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidPayloadError(f"a1111: '{name}' must be a positive number of seconds, got {value!r}")
    return float(value)


def validate_payload(payload: Any) -> dict[str, Any]:
    """Return the payload with ``mode`` filled in, or raise :class:`InvalidPayloadError`
    naming every problem at once."""
    if not isinstance(payload, dict):
        raise InvalidPayloadError("a1111: payload must be a JSON object (the WebUI's txt2img/img2img request)")
    mode = payload.get("mode", "txt2img")
    if mode not in ROUTES:
        raise InvalidPayloadError(f"a1111: 'mode' must be one of {', '.join(ROUTES)}, got {mode!r}")
    problems: list[str] = []
    unknown = sorted(set(payload) - all_field_names() - set(OWN_FIELDS))
    if unknown:
        problems.append(f"unknown field(s) {unknown} (not in the WebUI's request models)")
    fields = request_fields(mode, "forge")  # Forge's models are a superset of A1111's
    for name, value in payload.items():
        if name in OWN_FIELDS or name not in fields and name not in all_field_names():
            continue
        if name in OWNED:
            problems.append(f"'{name}' may not be set: {OWNED[name]}")
            continue
        if name not in fields:
            problems.append(f"'{name}' is not a {mode} field")
            continue
        kind, default = fields[name]
        if value is None:
            if default is not None:
                problems.append(f"'{name}' may not be null")
            continue
        if not _type_ok(kind, value):
            problems.append(f"'{name}' must be {_TYPE_NAMES.get(kind, kind)}, got {value!r}"[:200])
            continue
        low, high = RANGES.get(name, (None, None))
        if (low is not None and value < low) or (high is not None and value > high):
            problems.append(f"'{name}' must be between {low} and {high} (the WebUI's limits), got {value!r}")
    if mode == "img2img":
        images = payload.get("init_images")
        if not isinstance(images, list) or not images or not all(isinstance(i, str) and i for i in images):
            problems.append("img2img needs 'init_images': a non-empty list of base64 images (or data: URIs)")
    checkpoint = (payload.get("override_settings") or {}).get("sd_model_checkpoint") \
        if isinstance(payload.get("override_settings"), dict) else None
    if checkpoint is not None and not isinstance(checkpoint, str):
        problems.append(f"'override_settings.sd_model_checkpoint' must be a string, got {checkpoint!r}")
    if problems:
        raise InvalidPayloadError("a1111: " + "; ".join(problems))
    result = dict(payload)
    result["mode"] = mode
    for name in ("timeout", "stall_timeout", "node_timeout"):
        value = _positive(payload.get(name), name)
        if value is not None:
            result[name] = value
    return result


def request_body(payload: dict[str, Any], task_id: str) -> dict[str, Any]:
    """The body POSTed to the WebUI: the payload without jobqueue's own fields, plus the task
    id that lets ``/internal/progress`` tell our job from another client's."""
    body = {k: v for k, v in payload.items() if k not in OWN_FIELDS}
    body["force_task_id"] = task_id
    body["send_images"] = True
    return body
