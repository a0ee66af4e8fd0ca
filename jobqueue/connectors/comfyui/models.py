"""What a ComfyUI has (models, VRAM) and what a workflow needs (the models its loaders name).

* :func:`read_models` lists the model files ComfyUI sees, folder by folder, through
  ``GET /models`` (the folder names) and ``GET /models/<folder>`` (the files, as the loader
  nodes' option lists show them; 404 for a folder this ComfyUI does not know).
* :func:`vram_of` reads total and free VRAM from ``/system_stats`` devices; a CPU device is not
  VRAM (ComfyUI reports system RAM there).
* :func:`workflow_models` reads the model names an API-format workflow's loader nodes use
  (``ckpt_name``, ``lora_name``, ``vae_name``, ``unet_name``...), checkpoints first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import requests

#: Model folders whose files jobs may need (the others hold configs, custom nodes...).
MODEL_FOLDERS = (
    "checkpoints", "loras", "vae", "diffusion_models", "unet", "text_encoders", "clip", "clip_vision",
    "controlnet", "upscale_models", "style_models", "gligen", "hypernetworks", "photomaker",
)
#: Loader inputs that name a model file, whatever node they are on.
MODEL_INPUTS = (
    "ckpt_name", "lora_name", "vae_name", "unet_name", "control_net_name", "clip_name", "clip_name1",
    "clip_name2", "clip_name3", "clip_name4", "style_model_name", "gligen_name", "hypernetwork_name",
    "photomaker_model_name",
)
#: Nodes whose generic ``model_name`` input names a model file.
MODEL_NAME_NODES = ("UpscaleModelLoader",)
#: ComfyUI's loader nodes (v0.3.64): a ``FileNotFoundError`` from one of them is a model file
#: that vanished (a V3 loader, ``io.Combo``, accepts a missing file until it runs).
LOADER_NODES = frozenset({
    "CheckpointLoaderSimple", "CheckpointLoader", "unCLIPCheckpointLoader", "ImageOnlyCheckpointLoader",
    "LoraLoader", "LoraLoaderModelOnly", "VAELoader", "UNETLoader", "CLIPLoader", "DualCLIPLoader",
    "TripleCLIPLoader", "QuadrupleCLIPLoader", "CLIPVisionLoader", "ControlNetLoader", "DiffControlNetLoader",
    "StyleModelLoader", "GLIGENLoader", "HypernetworkLoader", "UpscaleModelLoader", "PhotoMakerLoader",
})

GIB = float(2**30)


def read_models(base_url: str, timeout: float, session: Any = requests) -> dict[str, list[str]] | None:
    """``{folder: [file names]}`` for the model folders this ComfyUI knows; None on failure."""
    try:
        response = session.get(f"{base_url}/models", timeout=(timeout, timeout))
        if response.status_code != 200:
            return None
        known = response.json()
        if not isinstance(known, list):
            return None
        models: dict[str, list[str]] = {}
        for folder in MODEL_FOLDERS:
            if folder not in known:
                continue
            answer = session.get(f"{base_url}/models/{folder}", timeout=(timeout, timeout))
            if answer.status_code == 404:
                continue
            if answer.status_code != 200:
                return None
            names = answer.json()
            if isinstance(names, list):
                models[folder] = sorted(n for n in names if isinstance(n, str))
        return models
    except (requests.RequestException, ValueError):
        return None


def vram_of(devices: Any) -> tuple[float, float]:
    """``(total, free)`` VRAM in GiB of the largest non-CPU device (0, 0 without one)."""
    best = (0.0, 0.0)
    for device in devices if isinstance(devices, list) else []:
        if not isinstance(device, Mapping) or device.get("type") == "cpu":
            continue
        total, free = device.get("vram_total"), device.get("vram_free")
        if isinstance(total, (int, float)) and total / GIB > best[0]:
            best = (round(total / GIB, 2), round(free / GIB, 2) if isinstance(free, (int, float)) else 0.0)
    return best


def capabilities(base_url: str, details: Mapping[str, Any], timeout: float) -> dict[str, Any] | None:
    """The connector's capabilities (models + VRAM) after a healthy check; None on failure."""
    models = read_models(base_url, timeout)
    if models is None:
        return None
    total, free = vram_of(details.get("devices"))
    return {"models": models, "vram_total_gb": total, "vram_free_gb": free}


def workflow_models(workflow: Any) -> list[str]:
    """Model names an API-format workflow's loader nodes name as literal inputs, checkpoints
    first, each once. Tolerates anything (validation reports malformed workflows)."""
    first: list[str] = []
    rest: list[str] = []
    if not isinstance(workflow, Mapping):
        return []
    for node in workflow.values():
        inputs = node.get("inputs") if isinstance(node, Mapping) else None
        if not isinstance(inputs, Mapping):
            continue
        names = list(MODEL_INPUTS)
        if node.get("class_type") in MODEL_NAME_NODES:
            names.append("model_name")
        for key in names:
            value = inputs.get(key)
            if isinstance(value, str) and value and value not in first and value not in rest:
                (first if key == "ckpt_name" else rest).append(value)
    return first + rest
