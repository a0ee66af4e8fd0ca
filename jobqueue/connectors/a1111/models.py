"""The checkpoints a WebUI has, for capability and warm routing.

A job names its checkpoint in ``override_settings.sd_model_checkpoint``
(:func:`required_checkpoint`), by any alias the WebUI accepts: ``modules/sd_models.py``'s
``CheckpointInfo.ids`` are the title (``name.safetensors [hash]``), the file's name under the
models folder, the model name (no extension), the short and full hashes, and ``name [hash]``.
:func:`checkpoint_aliases` lists all of them from ``GET /sdapi/v1/sd-models``, so a job routes
to a worker whose WebUI has the checkpoint whichever alias it used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def required_checkpoint(payload: Mapping[str, Any]) -> list[str]:
    """``[checkpoint]`` a payload's ``override_settings`` names (empty: the WebUI's own)."""
    overrides = payload.get("override_settings")
    checkpoint = overrides.get("sd_model_checkpoint") if isinstance(overrides, Mapping) else None
    return [checkpoint.strip()] if isinstance(checkpoint, str) and checkpoint.strip() else []


def checkpoint_aliases(models: Any) -> list[str]:
    """Every alias of every checkpoint in ``GET /sdapi/v1/sd-models``'s answer (sorted)."""
    out: set[str] = set()
    for entry in models if isinstance(models, list) else ():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("title"), str):
            continue
        title: str = entry["title"]
        name = title.split(" [")[0]
        short = entry.get("hash")
        out.update({title, name})
        if isinstance(entry.get("model_name"), str):
            out.add(entry["model_name"])
        if isinstance(short, str) and short:
            out.update({short, f"{name} [{short}]"})
        if isinstance(entry.get("sha256"), str) and entry["sha256"]:
            out.add(entry["sha256"])
    return sorted(n for n in out if n and "," not in n)
