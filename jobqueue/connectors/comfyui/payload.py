"""The example ``comfyui`` payload's workflow (the payload itself is checked by its model,
:class:`jobqueue.connectors.payloads.ComfyUIPayload`)."""

from __future__ import annotations

from typing import Any

#: EmptyImage -> ImageInvert -> SaveImage: runs on any ComfyUI, no model needed.
EXAMPLE_WORKFLOW: dict[str, Any] = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 170648}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "jobqueue"}},
}
