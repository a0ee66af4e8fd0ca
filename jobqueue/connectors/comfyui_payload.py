"""What a ``comfyui`` job's payload may hold, checked before it is enqueued (no I/O).

``{"workflow": {node id: {"class_type", "inputs"}}, "timeout"?, "stall_timeout"?,
"node_timeout"?}``: an API-format workflow (the UI format is refused with how to export the
other) and optional positive limits in seconds.
"""

from __future__ import annotations

from typing import Any

from jobqueue.errors import InvalidPayloadError

#: EmptyImage -> ImageInvert -> SaveImage: runs on any ComfyUI, no model needed.
EXAMPLE_WORKFLOW: dict[str, Any] = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 170648}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "jobqueue"}},
}

#: The payload's fields besides ``workflow``: limits in seconds.
LIMITS = ("timeout", "stall_timeout", "node_timeout")


def _positive(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise InvalidPayloadError(f"comfyui: '{name}' must be a positive number of seconds, got {value!r}")
    return float(value)


def validate_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload normalised (limits as floats, unknown fields refused), or
    :class:`InvalidPayloadError` saying what is wrong."""
    unknown = set(payload) - {"workflow", *LIMITS}
    if unknown:
        raise InvalidPayloadError(f"comfyui: unknown field(s) {sorted(unknown)} "
                                  "(expected workflow, timeout, stall_timeout, node_timeout)")
    workflow = payload.get("workflow")
    if not isinstance(workflow, dict) or not workflow:
        raise InvalidPayloadError("comfyui: 'workflow' must be a non-empty object of node id -> {class_type, inputs}")
    if isinstance(workflow.get("nodes"), list) and "links" in workflow:
        raise InvalidPayloadError("comfyui: 'workflow' is in ComfyUI's UI format; export it with "
                                  "'Save (API)' to get the API format (node id -> {class_type, inputs})")
    for node_id, node in workflow.items():
        if not isinstance(node, dict):
            raise InvalidPayloadError(f"comfyui: workflow node {node_id!r} must be an object with class_type and inputs")
        if not isinstance(node.get("class_type"), str) or not node["class_type"]:
            raise InvalidPayloadError(f"comfyui: workflow node {node_id!r} has no 'class_type' string")
        if not isinstance(node.get("inputs", {}), dict):
            raise InvalidPayloadError(f"comfyui: workflow node {node_id!r} has 'inputs' that is not an object")
    result: dict[str, Any] = {"workflow": workflow}
    for name in LIMITS:
        value = _positive(payload.get(name), name)
        if value is not None:
            result[name] = value
    return result
