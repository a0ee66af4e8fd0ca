"""Model files and VRAM of a simulated ComfyUI (``--models a.safetensors,b.safetensors
--vram-gb 24``).

* The loader nodes ComfyUI ships (``CheckpointLoaderSimple``, ``LoraLoader``) with the same
  inputs and ``/object_info`` shape: their ``ckpt_name``/``lora_name`` options are the files
  present, so validation refuses any other name with ComfyUI's ``value_not_in_list``; plus
  ``EmptyLatentImage`` and ``VAEDecode``, so a loader can feed an output node
  (``CheckpointLoaderSimple -> VAEDecode <- EmptyLatentImage``, ``-> SaveImage``): ComfyUI
  validates and runs only what an output depends on. Outputs are tokens; running the
  checkpoint loader costs the ``load_seconds`` option (:mod:`jobqueue.sims.comfyui.engine`).
* Loaders of both styles ComfyUI v0.3.64 ships, with its own input definitions: classic ones
  whose option list *is* the input type (``CheckpointLoaderSimple``, ``LoraLoader``,
  ``UpscaleModelLoader``, ``TripleCLIPLoader``: a missing file is ``value_not_in_list`` at
  POST /prompt) and V3 ones (``io.Combo``: ``QuadrupleCLIPLoader``, ``PhotoMakerLoader``) whose
  type is ``"COMBO"`` with the files under ``options``. ComfyUI checks a combo value only when
  the type is a list, so a V3 loader accepts a missing file and fails when it runs with
  ``folder_paths.get_full_path_or_raise``'s ``FileNotFoundError``.
* ``GET /models`` and ``GET /models/<folder>`` answer as ComfyUI's (folder names; the files
  of one folder, 404 for an unknown folder). ``POST /_sim/models`` changes the files while
  the simulator runs (a model copied in or deleted).
* :func:`devices` is the ``/system_stats`` device list: with ``vram_gb``, one CUDA device
  with that much VRAM, else ComfyUI's CPU device.

Like ComfyUI's own node registry, the option lists belong to the process: simulators in one
process (:class:`~jobqueue.sims.comfyui.server.SimulatorThread`) share them; run separate
processes (:class:`~jobqueue.sims.comfyui.process.SimulatorProcess`) for machines with
different models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from jobqueue.sims.comfyui.nodes import NODES, Image, NodeContext, NodeDef, NodeResult

#: The model folders a ComfyUI lists in ``GET /models`` (the ones loaders read).
FOLDERS = ("checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
           "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen", "upscale_models",
           "custom_nodes", "hypernetworks", "photomaker", "classifiers")

#: Files per folder, shared with the loader nodes' option lists (mutated in place).
FILES: dict[str, list[str]] = {folder: [] for folder in FOLDERS}


@dataclass(frozen=True)
class Token:
    """What a loader outputs here: the kind and the file it would have loaded."""

    kind: str
    name: str


@dataclass(frozen=True)
class Latent:
    """An empty latent batch (only its size matters to the decoder)."""

    width: int
    height: int
    batch_size: int


#: The folders ``POST /_sim/models`` may change.
SETTABLE = ("checkpoints", "loras", "upscale_models", "text_encoders", "photomaker")


def set_models(checkpoints: list[str] | None = None, loras: list[str] | None = None,
               **folders: list[str] | None) -> None:
    """Make these files present (a ``None`` folder keeps its files); ``folders``: any other
    folder of :data:`SETTABLE` by name."""
    for folder, names in (("checkpoints", checkpoints), ("loras", loras), *folders.items()):
        if folder not in SETTABLE:
            raise ValueError(f"unknown model folder {folder!r}")
        if names is not None:
            FILES[folder][:] = sorted({n for n in names if n})


async def set_models_route(request: web.Request) -> web.Response:
    """``POST /_sim/models {"checkpoints": [...], "loras": [...], "text_encoders": [...]}``:
    files appear or vanish, as when someone copies or deletes them on the machine."""
    data = await request.json()
    if not isinstance(data, dict) or not all(k in SETTABLE and isinstance(v, list) for k, v in data.items()):
        return web.json_response({"error": f"expected {{folder: [...]}} for folders {', '.join(SETTABLE)}"},
                                 status=400)
    set_models(**data)
    return web.json_response({folder: FILES[folder] for folder in SETTABLE})


def folder_files(folder: str) -> list[str] | None:
    """Files of ``folder`` (None for a folder ComfyUI does not know: a 404)."""
    files = FILES.get(folder)
    return None if files is None else list(files)


def devices(vram_gb: float | None, ram_total: int, ram_free: int, used_gb: float = 0.0) -> list[dict[str, Any]]:
    """``/system_stats`` devices: a CUDA device with ``vram_gb`` GiB (``used_gb`` of it taken
    by loaded models), else the CPU device."""
    if vram_gb:
        total = int(vram_gb * 2**30)
        free = max(0, total - min(total, 2**29) - int(used_gb * 2**30))  # a little in use, as on a real card
        return [{"name": "cuda:0 Simulated GPU : cudaMallocAsync", "type": "cuda", "index": 0,
                 "vram_total": total, "vram_free": free, "torch_vram_total": total, "torch_vram_free": free}]
    return [{"name": "cpu", "type": "cpu", "index": None, "vram_total": ram_total, "vram_free": ram_free,
             "torch_vram_total": ram_total, "torch_vram_free": ram_free}]


async def _load_checkpoint(ctx: NodeContext, ckpt_name: str) -> NodeResult:
    await ctx.load_checkpoint(ckpt_name)
    return (Token("MODEL", ckpt_name), Token("CLIP", ckpt_name), Token("VAE", ckpt_name)), None


async def _load_lora(ctx: NodeContext, model: Any, clip: Any, lora_name: str, strength_model: float = 1.0,
                     strength_clip: float = 1.0) -> NodeResult:
    return (model, clip), None


def full_path_or_raise(folder: str, name: str) -> str:
    """ComfyUI's ``folder_paths.get_full_path_or_raise``: the file, or its FileNotFoundError."""
    if name not in FILES[folder]:
        raise FileNotFoundError(f"Model in folder '{folder}' with filename '{name}' not found.")
    return name


async def _load_upscale(ctx: NodeContext, model_name: str) -> NodeResult:
    return (Token("UPSCALE_MODEL", full_path_or_raise("upscale_models", model_name)),), None


async def _load_clips(ctx: NodeContext, **names: str) -> NodeResult:
    files = [full_path_or_raise("text_encoders", names[key]) for key in sorted(names)]
    return (Token("CLIP", ",".join(files)),), None


async def _load_photomaker(ctx: NodeContext, photomaker_model_name: str) -> NodeResult:
    return (Token("PHOTOMAKER", full_path_or_raise("photomaker", photomaker_model_name)),), None


def _v3_combo(folder: str) -> list[Any]:
    """A V3 ``io.Combo.Input`` as ``/object_info`` shows it: type ``COMBO``, files as options."""
    return ["COMBO", {"multiselect": False, "options": FILES[folder]}]


async def _use_model(ctx: NodeContext, image: Any, model: Any) -> NodeResult:
    return (image,), None


async def _empty_latent(ctx: NodeContext, width: int, height: int, batch_size: int = 1) -> NodeResult:
    return (Latent(width, height, batch_size),), None


async def _vae_decode(ctx: NodeContext, samples: Any, vae: Any) -> NodeResult:
    if not isinstance(samples, Latent):
        raise TypeError(f"input 'samples' must be linked to a LATENT output, got {type(samples).__name__}")
    return (Image(samples.width, samples.height, samples.batch_size, 0x808080),), None


_STRENGTH = ["FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}]
_SIZE = ["INT", {"default": 512, "min": 16, "max": 16384, "step": 8}]

#: The model nodes, by class_type (added to :data:`~jobqueue.sims.comfyui.nodes.NODES`).
MODEL_NODES: dict[str, NodeDef] = {
    node.name: node
    for node in (
        NodeDef("CheckpointLoaderSimple",
                {"ckpt_name": [FILES["checkpoints"], {"tooltip": "The name of the checkpoint (model) to load."}]},
                _load_checkpoint, outputs=("MODEL", "CLIP", "VAE"), category="loaders",
                description="Loads a diffusion model checkpoint, diffusion models are used to denoise latents."),
        NodeDef("LoraLoader",
                {"model": ["MODEL"], "clip": ["CLIP"],
                 "lora_name": [FILES["loras"], {"tooltip": "The name of the LoRA."}],
                 "strength_model": _STRENGTH, "strength_clip": _STRENGTH},
                _load_lora, outputs=("MODEL", "CLIP"), category="loaders"),
        NodeDef("UpscaleModelLoader", {"model_name": [FILES["upscale_models"]]}, _load_upscale,
                outputs=("UPSCALE_MODEL",), category="loaders", python_module="comfy_extras.nodes_upscale_model"),
        NodeDef("TripleCLIPLoader", {f"clip_name{i}": [FILES["text_encoders"]] for i in (1, 2, 3)}, _load_clips,
                outputs=("CLIP",), category="advanced/loaders", python_module="comfy_extras.nodes_sd3",
                description="[Recipes]\n\nsd3: clip-l, clip-g, t5"),
        NodeDef("QuadrupleCLIPLoader", {f"clip_name{i}": _v3_combo("text_encoders") for i in (1, 2, 3, 4)},
                _load_clips, outputs=("CLIP",), category="advanced/loaders", python_module="comfy_extras.nodes_hidream",
                description="[Recipes]\n\nhidream: long clip-l, long clip-g, t5xxl, llama_8b_3.1_instruct"),
        NodeDef("PhotoMakerLoader", {"photomaker_model_name": _v3_combo("photomaker")}, _load_photomaker,
                outputs=("PHOTOMAKER",), category="_for_testing/photomaker",
                python_module="comfy_extras.nodes_photomaker"),
        NodeDef("SimUseModel", {"image": ["IMAGE"], "model": ["*"]}, _use_model, outputs=("IMAGE",),
                category="testing", python_module="jobqueue.sims.comfyui",
                description="Passes its image through once any model is linked (puts a loader on an output's path)."),
        NodeDef("EmptyLatentImage",
                {"width": _SIZE, "height": _SIZE, "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}]},
                _empty_latent, outputs=("LATENT",), category="latent"),
        NodeDef("VAEDecode", {"samples": ["LATENT"], "vae": ["VAE"]}, _vae_decode, outputs=("IMAGE",),
                category="latent"),
    )
}

NODES.update(MODEL_NODES)


def checkpoint_workflow(ckpt_name: str, prefix: str = "jobqueue") -> dict[str, Any]:
    """A minimal API-format workflow that loads ``ckpt_name`` and saves one image."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix}},
    }
