"""The simulated GPU's memory: one documented cost model both simulators use to decide that a
request is out of memory, so a test can pick a job that fits a 24 GB card and not an 8 GB one.

A request needs :data:`MODEL_GB` for the weights plus :data:`GB_PER_MEGAPIXEL` per megapixel
of one batch (``width × height × batch_size / 10⁶``): a 1024×1024 batch of 4 needs
2 + 1.5 × 4.19 ≈ 8.3 GB, more than an 8 GB card, well within a 24 GB one. The WebUI simulator
checks it before sampling (``--vram-gb``, default 24); the ComfyUI simulator before each node
whose inputs carry images or a ``width``/``height`` (``--vram-gb``; none: a CPU device, never
out of memory).
"""

from __future__ import annotations

#: GB the model weights take, and GB per megapixel of one batch.
MODEL_GB = 2.0
GB_PER_MEGAPIXEL = 1.5


def vram_needed_gb(width: int, height: int, batch_size: int) -> float:
    """The documented cost model of a request: ``MODEL_GB`` for the weights plus
    ``GB_PER_MEGAPIXEL`` per megapixel of one batch (``width × height × batch_size / 10⁶``)."""
    return MODEL_GB + GB_PER_MEGAPIXEL * width * height * batch_size / 1e6
