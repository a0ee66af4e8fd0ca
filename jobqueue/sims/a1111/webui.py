"""Facts of the simulated WebUI that depend on its version: samplers and their fallback,
checkpoints and their aliases, the options ``override_settings`` may name, and the
simulated VRAM that decides an out-of-memory error.

Read from the WebUI's source (lllyasviel/stable-diffusion-webui-forge, whose history holds
A1111 1.7-1.10):

* ``modules/sd_samplers.py``: from 1.9 ``get_sampler_and_scheduler`` answers an unknown
  sampler with ``samplers[0]`` (``DPM++ 2M``) and the request goes on (200); up to 1.8
  ``validate_sampler_name`` raises ``HTTPException(404, "Sampler not found")``.
* ``modules/sd_models.py`` ``CheckpointInfo.ids``: a checkpoint is found by its title
  (``name [hash]``), file name, name without extension, short hash or sha256.
* ``modules/options.py`` ``Options.set``: an option the WebUI does not have raises
  ``KeyError`` (a 500 through ``api_middleware``) unless the value is null.
* ``modules/api/api.py``: ``force_task_id`` and the task bookkeeping of ``modules/progress.py``
  exist for API requests from 1.8 on.
"""

from __future__ import annotations

import re
from typing import Any

from jobqueue.sims.vram import vram_needed_gb as vram_needed_gb

#: Sampler names of the WebUI (``modules/sd_samplers_kdiffusion.py``, ``..._timesteps.py``);
#: the first is the default a 1.9+ WebUI falls back to.
SAMPLERS = ("DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE",
            "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart",
            "DDIM", "DDIM CFG++", "PLMS", "UniPC", "LCM")
#: Scheduler labels a sampler name may end with ("DPM++ 2M Karras").
SCHEDULERS = ("Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
              "Align Your Steps", "Simple", "Normal", "DDIM", "Beta")
#: Checkpoints the simulator "has": title -> (model name, short hash).
CHECKPOINTS = {
    "v1-5-pruned-emaonly.safetensors [6ce0161689]": ("v1-5-pruned-emaonly", "6ce0161689"),
    "sd_xl_base_1.0.safetensors [31e35c80fc]": ("sd_xl_base_1.0", "31e35c80fc"),
}
DEFAULT_CHECKPOINT = "v1-5-pruned-emaonly.safetensors [6ce0161689]"

#: The options of ``shared.opts`` the simulator has (a subset of the WebUI's, with its defaults).
DEFAULT_OPTIONS: dict[str, Any] = {
    "sd_model_checkpoint": DEFAULT_CHECKPOINT, "sd_checkpoint_hash": "6ce0161689",
    "samples_format": "png", "live_previews_enable": True, "show_progress_every_n_steps": 10,
    "live_previews_image_format": "png", "return_grid": True, "grid_only_if_multiple": True,
    "enable_pnginfo": True, "CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic", "eta_noise_seed_delta": 0,
    "jpeg_quality": 80, "webp_lossless": False, "randn_source": "GPU", "token_merging_ratio": 0.0,
    "img2img_color_correction": False, "img2img_fix_steps": False, "s_churn": 0.0, "s_tmin": 0.0,
    "s_tmax": 0.0, "s_noise": 1.0, "eta_ancestral": 1.0, "eta_ddim": 0.0, "sd_vae_overrides_per_model_preferences": True,
    "emphasis": "Original", "comma_padding_backtrack": 20, "sdxl_crop_top": 0, "sdxl_crop_left": 0,
}

#: ``--version`` values of the simulator (A1111 release tags) and what each reports.
VERSIONS = {"1.7": "v1.7.0", "1.8": "v1.8.0", "1.9": "v1.9.4", "1.10": "v1.10.1"}
FORGE_VERSION = "f2.0.1v1.10.1-previous-669-gdfdcbab6"

#: Simulated VRAM (GB) by default (the cost of a request: :mod:`jobqueue.sims.vram`).
DEFAULT_VRAM_GB = 24.0


class HTTPError(Exception):
    """An exception the WebUI raises inside a route: ``api_middleware`` answers
    ``{"error": <name>, "detail", "body", "errors"}`` with ``status``."""

    def __init__(self, status: int, detail: str, name: str = "HTTPException") -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.name = name


def parse_version(version: str) -> tuple[int, int]:
    """``(major, minor)`` of an A1111 release a ``--version`` value names (Forge: 1.10)."""
    match = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.\d+)?", version.strip())
    if match is None:
        raise ValueError(f"unknown WebUI version {version!r} (known: {', '.join(VERSIONS)})")
    return int(match.group(1)), int(match.group(2))


def resolve_sampler(name: str | None, scheduler: str | None, release: tuple[int, int],
                    flavour: str) -> tuple[str, str | None]:
    """The sampler and scheduler a request runs with: 1.9+ and Forge strip a scheduler suffix
    and fall back to ``SAMPLERS[0]`` for an unknown name; up to 1.8 an unknown name is a 404."""
    name = name or "Euler"
    for label in SCHEDULERS:
        if name.endswith(" " + label) and name[: -len(label) - 1] in SAMPLERS:
            return name[: -len(label) - 1], scheduler or label
    if name in SAMPLERS:
        return name, scheduler
    if flavour == "forge" or release >= (1, 9):
        return SAMPLERS[0], scheduler
    raise HTTPError(404, "Sampler not found")


def resolve_checkpoint(alias: Any) -> str | None:
    """The title of the checkpoint ``alias`` names (title, file name, name, short hash), or None."""
    if not isinstance(alias, str):
        return None
    for title, (name, short) in CHECKPOINTS.items():
        file_name = title.split(" [")[0]
        if alias in (title, file_name, name, short, f"{file_name} [{short}]"):
            return title
    return None


def oom_error(needed: float, vram: float) -> HTTPError:
    """torch's ``OutOfMemoryError`` as the WebUI's middleware answers it (500)."""
    text = (f"CUDA out of memory. Tried to allocate {max(needed - vram, 0.02):.2f} GiB. GPU 0 has a total capacity "
            f"of {vram:.2f} GiB of which 0 bytes is free. Of the allocated memory {vram:.2f} GiB is allocated by "
            "PyTorch. See documentation for Memory Management (PYTORCH_CUDA_ALLOC_CONF)")
    return HTTPError(500, text, "OutOfMemoryError")
