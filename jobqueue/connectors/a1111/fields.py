"""The request fields of the Stable Diffusion WebUI's ``/sdapi/v1/txt2img`` and ``img2img``.

One home for facts both the ``a1111`` connector (validation at submit) and the simulator
(``jobqueue.sims.a1111``: its pydantic-shaped 422 answers) need. Taken from the WebUI's source:

* AUTOMATIC1111/stable-diffusion-webui **v1.10.1**: ``modules/api/models.py`` builds the request
  models from the ``__init__`` parameters of ``StableDiffusionProcessingTxt2Img`` /
  ``...Img2Img`` (``modules/processing.py``), every one ``Optional[<annotation>]`` with the
  dataclass default, minus ``API_NOT_ALLOWED``, plus the API-only fields (``sampler_index``,
  ``script_name``, ``send_images``...).
* lllyasviel/stable-diffusion-webui-forge at ``dfdcbab6`` (2025-06-26): the same generator, with
  Forge's extra processing fields (``distilled_cfg_scale``, ``hr_cfg``...).

The request models check *types only* (and coerce: ``"20"`` is a step count for pydantic 1
and 2 alike). ``API_LIMITS`` are the values the WebUI cannot run (it accepts ``steps: -1`` and
fails later), refused at submit; ``UI_LIMITS`` are the UI's slider limits (``modules/ui.py``,
``modules/processing_scripts/sampler.py`` for steps), a default a payload may lift.
"""

from __future__ import annotations

from typing import Any

#: Field kinds: how pydantic checks a value (every field also accepts null).
INT, FLOAT, STR, BOOL, LIST, DICT, STR_LIST, ANY = "int", "float", "str", "bool", "list", "dict", "list[str]", "any"

_BASE: dict[str, tuple[str, Any]] = {
    "prompt": (STR, ""),
    "negative_prompt": (STR, ""),
    "styles": (STR_LIST, None),
    "seed": (INT, -1),
    "subseed": (INT, -1),
    "subseed_strength": (FLOAT, 0),
    "seed_resize_from_h": (INT, -1),
    "seed_resize_from_w": (INT, -1),
    "sampler_name": (STR, None),
    "scheduler": (STR, None),
    "batch_size": (INT, 1),
    "n_iter": (INT, 1),
    "steps": (INT, 50),
    "cfg_scale": (FLOAT, 7.0),
    "width": (INT, 512),
    "height": (INT, 512),
    "restore_faces": (BOOL, None),
    "tiling": (BOOL, None),
    "do_not_save_samples": (BOOL, False),
    "do_not_save_grid": (BOOL, False),
    "eta": (FLOAT, None),
    "denoising_strength": (FLOAT, None),
    "s_min_uncond": (FLOAT, None),
    "s_churn": (FLOAT, None),
    "s_tmax": (FLOAT, None),
    "s_tmin": (FLOAT, None),
    "s_noise": (FLOAT, None),
    "override_settings": (DICT, None),
    "override_settings_restore_afterwards": (BOOL, True),
    "refiner_checkpoint": (STR, None),
    "refiner_switch_at": (FLOAT, None),
    "disable_extra_networks": (BOOL, False),
    "firstpass_image": (STR, None),
    "comments": (DICT, None),
}

_TXT2IMG: dict[str, tuple[str, Any]] = {
    "enable_hr": (BOOL, False),
    "denoising_strength": (FLOAT, 0.75),
    "firstphase_width": (INT, 0),
    "firstphase_height": (INT, 0),
    "hr_scale": (FLOAT, 2.0),
    "hr_upscaler": (STR, None),
    "hr_second_pass_steps": (INT, 0),
    "hr_resize_x": (INT, 0),
    "hr_resize_y": (INT, 0),
    "hr_checkpoint_name": (STR, None),
    "hr_sampler_name": (STR, None),
    "hr_scheduler": (STR, None),
    "hr_prompt": (STR, ""),
    "hr_negative_prompt": (STR, ""),
    "force_task_id": (STR, None),
}

_IMG2IMG: dict[str, tuple[str, Any]] = {
    "init_images": (LIST, None),
    "resize_mode": (INT, 0),
    "denoising_strength": (FLOAT, 0.75),
    "image_cfg_scale": (FLOAT, None),
    "mask": (STR, None),
    "mask_blur_x": (INT, 4),
    "mask_blur_y": (INT, 4),
    "mask_blur": (INT, None),
    "mask_round": (BOOL, True),
    "inpainting_fill": (INT, 0),
    "inpaint_full_res": (BOOL, True),
    "inpaint_full_res_padding": (INT, 0),
    "inpainting_mask_invert": (INT, 0),
    "initial_noise_multiplier": (FLOAT, None),
    "latent_mask": (STR, None),
    "force_task_id": (STR, None),
    "include_init_images": (BOOL, False),
}

#: Fields only Forge's processing classes have, each with the field it follows there.
_FORGE_BASE: dict[str, tuple[str, tuple[str, Any]]] = {"distilled_cfg_scale": ("cfg_scale", (FLOAT, 3.5))}
_FORGE_TXT2IMG: dict[str, tuple[str, tuple[str, Any]]] = {
    "hr_additional_modules": ("hr_checkpoint_name", (LIST, None)),
    "hr_cfg": ("hr_negative_prompt", (FLOAT, 1.0)),
    "hr_distilled_cfg": ("hr_cfg", (FLOAT, 3.5)),
}
_FORGE_IMG2IMG: dict[str, tuple[str, tuple[str, Any]]] = {"hr_distilled_cfg": ("force_task_id", (FLOAT, 3.5))}


def _insert(fields: dict[str, tuple[str, Any]], extra: dict[str, tuple[str, tuple[str, Any]]]) -> dict[str, tuple[str, Any]]:
    """``fields`` with each extra field right after the one it follows (pydantic checks in order)."""
    result = dict(fields)
    for name, (after, spec) in extra.items():
        items = list(result.items())
        position = [key for key, _ in items].index(after) + 1
        result = dict(items[:position] + [(name, spec)] + items[position:])
    return result


#: The API-only fields ``models.py`` appends to both request models.
_API_EXTRA: dict[str, tuple[str, Any]] = {
    "sampler_index": (STR, "Euler"),
    "script_name": (STR, None),
    "script_args": (LIST, []),
    "send_images": (BOOL, True),
    "save_images": (BOOL, False),
    "alwayson_scripts": (DICT, {}),
    "infotext": (STR, None),
}

#: What the WebUI can run at all (inclusive; None: no bound). Its request models check types
#: only, so ``steps: -1`` or ``width: 0`` would reach the server and fail there.
API_LIMITS: dict[str, tuple[float | None, float | None]] = {
    "steps": (1, None),
    "width": (8, None),
    "height": (8, None),
    "batch_size": (1, None),
    "n_iter": (1, None),
    "denoising_strength": (0.0, 1.0),
    "subseed_strength": (0.0, 1.0),
    "seed": (-1, 2**32 - 1),
    "subseed": (-1, 2**32 - 1),
    "hr_second_pass_steps": (0, None),
}

#: The WebUI's UI slider limits (``modules/ui.py``): the API does not enforce them and a user
#: can raise them (``ui-config.json``), so they are only jobqueue's default, lifted by a
#: payload's ``"ui_limits": false``.
UI_LIMITS: dict[str, tuple[float | None, float | None]] = {
    "steps": (1, 150),
    "width": (64, 2048),
    "height": (64, 2048),
    "batch_size": (1, 8),
    "n_iter": (1, 100),
    "cfg_scale": (1.0, 30.0),
    "hr_scale": (1.0, 4.0),
    "hr_second_pass_steps": (0, 150),
    "distilled_cfg_scale": (0.0, 30.0),
}

#: The limits checked by default: the API's and the UI's.
RANGES: dict[str, tuple[float | None, float | None]] = {**API_LIMITS, **UI_LIMITS}

#: Modes a job may ask for, and the WebUI route each one posts to.
ROUTES = {"txt2img": "/sdapi/v1/txt2img", "img2img": "/sdapi/v1/img2img"}
#: WebUI flavours whose request models we know.
FLAVOURS = ("a1111", "forge")


def request_fields(mode: str, flavour: str = "a1111") -> dict[str, tuple[str, Any]]:
    """Every field of ``mode``'s request model: name -> (kind, default), in the model's order."""
    if mode not in ROUTES:
        raise ValueError(f"unknown mode {mode!r} (known: {', '.join(ROUTES)})")
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r} (known: {', '.join(FLAVOURS)})")
    # The model's order: the subclass dataclass's __init__ (base fields first, overrides in place).
    fields = dict(_BASE)
    fields.update(_TXT2IMG if mode == "txt2img" else _IMG2IMG)
    if flavour == "forge":
        fields = _insert(fields, _FORGE_BASE)
        fields = _insert(fields, _FORGE_TXT2IMG if mode == "txt2img" else _FORGE_IMG2IMG)
    fields.update(_API_EXTRA)
    return fields


def all_field_names() -> set[str]:
    """Names a job payload may use in any mode on any flavour."""
    names: set[str] = set()
    for mode in ROUTES:
        for flavour in FLAVOURS:
            names.update(request_fields(mode, flavour))
    return names
