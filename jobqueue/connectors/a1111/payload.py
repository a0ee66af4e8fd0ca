"""The WebUI request an ``a1111`` job payload becomes.

A payload is the WebUI's own txt2img / img2img request body plus ``mode`` (``txt2img``, the
default, or ``img2img``) and jobqueue's ``timeout`` / ``stall_timeout`` / ``node_timeout``; it is checked at submit
by its pydantic model (:func:`jobqueue.connectors.payloads.validate_a1111`, built from the
WebUI's request models in :mod:`jobqueue.connectors.a1111.fields`).
"""

from __future__ import annotations

from typing import Any

from jobqueue.connectors.payloads import A1111_OWN_FIELDS


def request_body(payload: dict[str, Any], task_id: str) -> dict[str, Any]:
    """The body POSTed to the WebUI: the payload without jobqueue's own fields, plus the task
    id that lets ``/internal/progress`` tell our job from another client's."""
    body = {k: v for k, v in payload.items() if k not in A1111_OWN_FIELDS}
    body["force_task_id"] = task_id
    body["send_images"] = True
    return body
