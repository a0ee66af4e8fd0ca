"""The simulated WebUI's insides: ``shared.state``, the queue lock, the task ids of
``modules/progress.py`` and a model-free ``process_images`` that takes real time per step.

It follows the WebUI's own order of events (``modules/api/api.py`` ``text2imgapi``,
``modules/processing.py`` ``process_images_inner``): the task is queued, waits for the one
queue lock, ``state.begin()``, ``start_task()``, the checkpoint switch of ``override_settings``
(silent: no progress while the "model" loads), then ``n_iter`` batches of ``steps`` sampling
steps, each honouring ``interrupt`` and ``skip`` at the next step; an interrupted batch still
yields its (partial) images, as the WebUI decodes the partial latent. Images are solid-colour
PNGs whose colour follows the seed and prompt, so the same request gives the same bytes.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import hashlib
import json
import random
import string
import struct
import time
import zlib
from collections import OrderedDict
from typing import Any

from jobqueue.sims.comfyui.png import solid_png

#: Sampler names of the WebUI (``modules/sd_samplers_kdiffusion.py``, ``..._timesteps.py``).
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


class HTTPError(Exception):
    """An ``HTTPException`` the WebUI raises inside a route (status and detail)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def png_with_text(width: int, height: int, color: int, text: dict[str, str]) -> bytes:
    """A solid PNG with ``tEXt`` chunks (the WebUI stores the infotext as ``parameters``)."""
    png = solid_png(width, height, color)
    chunks = b""
    for key, value in text.items():
        data = key.encode("latin-1") + b"\x00" + value.encode("latin-1", errors="replace")
        chunks += struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data) & 0xFFFFFFFF)
    return png[:-12] + chunks + png[-12:]  # before IEND


def colour(seed: int, prompt: str, step: int | None = None) -> int:
    """The deterministic colour of an image (or of a preview at ``step``)."""
    digest = hashlib.sha256(f"{seed}|{prompt}|{step}".encode()).digest()
    return int.from_bytes(digest[:3], "big")


@dataclasses.dataclass
class _Params:
    """What one request asks ``process_images`` for (a random seed is drawn when it gives none)."""

    steps: int
    n_iter: int
    batch: int
    width: int
    height: int
    prompt: str
    negative: str
    seed: int
    #: One seed per image: ``seed``, ``seed + 1``, ...
    seeds: list[int]

    @classmethod
    def of(cls, request: dict[str, Any]) -> _Params:
        steps, n_iter, batch = int(request["steps"]), int(request["n_iter"]), int(request["batch_size"])
        width, height = int(request["width"]), int(request["height"])
        prompt, negative = str(request.get("prompt") or ""), str(request.get("negative_prompt") or "")
        seed = int(request["seed"]) if request.get("seed") not in (None, -1) else random.randrange(4294967294)
        return cls(steps, n_iter, batch, width, height, prompt, negative, seed, [seed + i for i in range(n_iter * batch)])


class State:
    """``modules.shared_state.State``: what ``/sdapi/v1/progress`` reports."""

    def __init__(self) -> None:
        self.skipped = self.interrupted = self.stopping_generation = False
        self.job = ""
        self.job_no = self.job_count = 0
        self.job_timestamp = "0"
        self.sampling_step = self.sampling_steps = 0
        self.current_image: bytes | None = None
        self.current_image_sampling_step = 0
        self.id_live_preview = 0
        self.textinfo: str | None = None
        self.time_start: float | None = None

    def dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "interrupted": self.interrupted,
                "stopping_generation": self.stopping_generation, "job": self.job, "job_count": self.job_count,
                "job_timestamp": self.job_timestamp, "job_no": self.job_no, "sampling_step": self.sampling_step,
                "sampling_steps": self.sampling_steps}

    def begin(self, job: str) -> None:
        self.sampling_step = 0
        self.time_start = time.time()
        self.job_count = -1
        self.job_no = 0
        self.job_timestamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
        self.current_image = None
        self.current_image_sampling_step = 0
        self.id_live_preview = 0
        self.skipped = self.interrupted = self.stopping_generation = False
        self.textinfo = None
        self.job = job

    def end(self) -> None:
        self.job = ""
        self.job_count = 0

    def nextjob(self) -> None:
        self.job_no += 1
        self.sampling_step = 0
        self.current_image_sampling_step = 0


class Engine:
    """One WebUI's generation side: state, options, queue lock and task bookkeeping."""

    def __init__(self, flavour: str = "a1111", *, step_seconds: float = 0.05, load_seconds: float = 1.0) -> None:
        self.flavour = flavour
        self.state = State()
        #: Seconds per sampling step and per checkpoint load (set from the control port).
        self.step_seconds = step_seconds
        self.load_seconds = load_seconds
        self.opts: dict[str, Any] = {
            "sd_model_checkpoint": DEFAULT_CHECKPOINT, "sd_checkpoint_hash": "6ce0161689",
            "samples_format": "png", "live_previews_enable": True, "show_progress_every_n_steps": 10,
            "live_previews_image_format": "png", "return_grid": True, "grid_only_if_multiple": True,
            "enable_pnginfo": True, "CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic",
        }
        #: The checkpoint in memory (``override_settings`` may restore the option afterwards).
        self.loaded = DEFAULT_CHECKPOINT
        self.lock = asyncio.Lock()
        #: Cleared while frozen: steps and loads wait here.
        self.thawed = asyncio.Event()
        self.thawed.set()
        self.pending_tasks: OrderedDict[str, float] = OrderedDict()
        self.current_task: str | None = None
        self.finished_tasks: list[str] = []
        self.generated = 0

    # -- modules/progress.py ---------------------------------------------------------------
    @staticmethod
    def create_task_id(task_type: str) -> str:
        res = "".join(random.choices(string.ascii_uppercase + string.digits, k=7))
        return f"task({task_type}-{res})"

    def start_task(self, task_id: str) -> None:
        self.current_task = task_id
        self.pending_tasks.pop(task_id, None)

    def finish_task(self, task_id: str) -> None:
        if self.current_task == task_id:
            self.current_task = None
        self.finished_tasks.append(task_id)
        if len(self.finished_tasks) > 16:
            self.finished_tasks.pop(0)

    # -- actions ---------------------------------------------------------------------------
    def interrupt(self) -> None:
        self.state.interrupted = True

    def skip(self) -> None:
        self.state.skipped = True

    async def _wait(self, seconds: float) -> None:
        """Take ``seconds`` of (simulated) GPU time; a frozen server makes no progress."""
        end = time.monotonic() + seconds
        while True:
            await self.thawed.wait()
            left = end - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.05))

    async def load_checkpoint(self, title: str) -> None:
        """Switch the model in memory: takes ``load_seconds``, reports nothing meanwhile."""
        if title != self.loaded:
            await self._wait(self.load_seconds)
            self.loaded = title

    def resolve_sampler(self, name: str | None, scheduler: str | None) -> tuple[str, str | None]:
        """``sd_samplers.get_sampler_and_scheduler`` + ``validate_sampler_name``."""
        name = name or "Euler"
        if name not in SAMPLERS:
            for label in SCHEDULERS:
                if name.endswith(" " + label) and name[: -len(label) - 1] in SAMPLERS:
                    return name[: -len(label) - 1], scheduler or label
            raise HTTPError(400 if self.flavour == "forge" else 404, "Sampler not found")
        return name, scheduler

    # -- process_images --------------------------------------------------------------------
    async def generate(self, mode: str, request: dict[str, Any]) -> dict[str, Any]:
        """Run one txt2img/img2img request the WebUI's way; return the response body."""
        task_id = request.get("force_task_id") or self.create_task_id(mode)
        if mode == "img2img" and request.get("init_images") is None:
            raise HTTPError(404, "Init image not found")
        sampler, scheduler = self.resolve_sampler(request.get("sampler_name") or request.get("sampler_index"),
                                                  request.get("scheduler"))
        self.pending_tasks[task_id] = time.time()
        try:
            async with self.lock:
                state = self.state
                state.begin(job=f"scripts_{mode}")
                self.start_task(task_id)
                try:
                    return await self._process(mode, request, sampler, scheduler or "Automatic")
                finally:
                    self.finish_task(task_id)
                    state.end()
        finally:
            self.pending_tasks.pop(task_id, None)

    async def _process(self, mode: str, request: dict[str, Any], sampler: str, scheduler: str) -> dict[str, Any]:
        """``process_images`` under the request's ``override_settings`` (restored afterwards
        unless it asks not to): the checkpoint switch, the batches, the answer."""
        stored = dict(self.opts)
        overrides = dict(request.get("override_settings") or {})
        checkpoint = overrides.get("sd_model_checkpoint")
        if checkpoint is not None and checkpoint not in CHECKPOINTS:
            overrides.pop("sd_model_checkpoint")  # the WebUI drops unknown checkpoints silently
            checkpoint = None
        self.opts.update(overrides)
        try:
            if checkpoint is not None:
                await self.load_checkpoint(checkpoint)
            params = _Params.of(request)
            images, infotexts = await self._run_batches(params, self._infotext(request, params, sampler, scheduler))
            info = self._info(request, params, sampler, len(images), infotexts)
        finally:
            if request.get("override_settings_restore_afterwards", True):
                self.opts = stored
        send = request.get("send_images", True)
        parameters = dict(request)
        if mode == "img2img" and not request.get("include_init_images"):
            parameters["init_images"] = None
            parameters["mask"] = None
        parameters.pop("include_init_images", None)
        return {"images": [base64.b64encode(image).decode("ascii") for image in images] if send else [],
                "parameters": parameters, "info": json.dumps(info)}

    async def _run_batches(self, params: _Params, infotext: str) -> tuple[list[bytes], list[str]]:
        """``n_iter`` batches of ``batch_size`` images: ``skip`` ends the batch in progress,
        ``interrupt`` (or a stop) the batches after it; the images of a cut batch are kept."""
        state = self.state
        images: list[bytes] = []
        infotexts: list[str] = []
        if state.job_count == -1:
            state.job_count = params.n_iter
        for n in range(params.n_iter):
            if state.skipped:
                state.skipped = False
            if state.interrupted or state.stopping_generation:
                break
            state.job = f"Batch {n + 1} out of {params.n_iter}"
            state.sampling_steps = params.steps
            await self._sample(params, params.seeds[n * params.batch])
            for i in range(params.batch):
                s = params.seeds[n * params.batch + i]
                text = infotext.replace("{seed}", str(s))
                infotexts.append(text)
                images.append(png_with_text(params.width, params.height, colour(s, params.prompt),
                                            {"parameters": text}))
                self.generated += 1
            state.nextjob()
        return images, infotexts

    async def _sample(self, params: _Params, seed: int) -> None:
        """One batch's sampling steps, each taking ``step_seconds``, with a live preview every
        ``show_progress_every_n_steps``; stops at the next step on ``interrupt`` or ``skip``."""
        state = self.state
        for _ in range(max(params.steps, 0)):
            await self._wait(self.step_seconds)
            if state.interrupted or state.skipped:
                break
            state.sampling_step += 1
            every = int(self.opts.get("show_progress_every_n_steps") or 0)
            if (self.opts.get("live_previews_enable") and every > 0
                    and state.sampling_step - state.current_image_sampling_step >= every):
                preview = colour(seed, params.prompt, state.sampling_step)
                state.current_image = png_with_text(max(8, params.width // 8), max(8, params.height // 8), preview, {})
                state.current_image_sampling_step = state.sampling_step
                state.id_live_preview += 1

    def _infotext(self, request: dict[str, Any], params: _Params, sampler: str, scheduler: str) -> str:
        """The ``parameters`` text of every image, with ``{seed}`` left to fill in per image."""
        model_name, model_hash = CHECKPOINTS[self.loaded]
        return (f"{params.prompt}\nNegative prompt: {params.negative}\nSteps: {params.steps}, Sampler: {sampler}, "
                f"Schedule type: {scheduler}, CFG scale: {request.get('cfg_scale')}, Seed: {{seed}}, "
                f"Size: {params.width}x{params.height}, Model hash: {model_hash}, Model: {model_name}, "
                f"Version: {self.version}")

    def _info(self, request: dict[str, Any], params: _Params, sampler: str, count: int,
              infotexts: list[str]) -> dict[str, Any]:
        """The answer's ``info`` (``Processed.js()``) for ``count`` images."""
        model_name, model_hash = CHECKPOINTS[self.loaded]
        prompt, negative, seeds = params.prompt, params.negative, params.seeds
        return {
            "prompt": prompt, "all_prompts": [prompt] * count, "negative_prompt": negative,
            "all_negative_prompts": [negative] * count, "seed": params.seed, "all_seeds": seeds[:count],
            "subseed": request.get("subseed"), "all_subseeds": seeds[:count],
            "subseed_strength": request.get("subseed_strength"), "width": params.width, "height": params.height,
            "sampler_name": sampler, "cfg_scale": request.get("cfg_scale"), "steps": params.steps,
            "batch_size": params.batch,
            "restore_faces": request.get("restore_faces"), "face_restoration_model": None,
            "sd_model_name": model_name, "sd_model_hash": model_hash, "sd_vae_name": None, "sd_vae_hash": None,
            "seed_resize_from_w": request.get("seed_resize_from_w"),
            "seed_resize_from_h": request.get("seed_resize_from_h"),
            "denoising_strength": request.get("denoising_strength"), "extra_generation_params": {},
            "index_of_first_image": 0, "infotexts": infotexts, "styles": request.get("styles") or [],
            "job_timestamp": self.state.job_timestamp, "clip_skip": self.opts.get("CLIP_stop_at_last_layers"),
            "is_using_inpainting_conditioning": False, "version": self.version,
        }

    @property
    def version(self) -> str:
        return "f2.0.1v1.10.1-previous-669-gdfdcbab6" if self.flavour == "forge" else "v1.10.1"

    # -- /sdapi/v1/progress ----------------------------------------------------------------
    def progress(self, skip_current_image: bool) -> dict[str, Any]:
        """``Api.progressapi``, including its quirks (the 0.01 head start, ``job_count == -1``)."""
        state = self.state
        if state.job_count == 0:
            return {"progress": 0, "eta_relative": 0, "state": state.dict(), "current_image": None,
                    "textinfo": state.textinfo}
        progress = 0.01
        if state.job_count > 0:
            progress += state.job_no / state.job_count
        if state.sampling_steps > 0:
            progress += 1 / state.job_count * state.sampling_step / state.sampling_steps
        since = time.time() - (state.time_start or time.time())
        eta = since / progress if progress else 0.0
        eta_relative = eta - since
        progress = min(progress, 1)
        image = None
        if state.current_image and not skip_current_image:
            image = base64.b64encode(state.current_image).decode("ascii")
        return {"progress": progress, "eta_relative": eta_relative, "state": state.dict(), "current_image": image,
                "textinfo": state.textinfo}

    # -- /internal/progress (modules/progress.py) ------------------------------------------
    def task_progress(self, id_task: str | None, id_live_preview: int, live_preview: bool) -> dict[str, Any]:
        active = id_task == self.current_task
        queued = id_task in self.pending_tasks
        completed = id_task in self.finished_tasks
        empty = {"progress": None, "eta": None, "live_preview": None}
        if not active:
            textinfo = "Waiting..."
            if queued:
                ordered = sorted(self.pending_tasks, key=lambda t: self.pending_tasks[t])
                textinfo = f"In queue: {ordered.index(id_task) + 1}/{len(ordered)}"  # type: ignore[arg-type]
            return {"active": active, "queued": queued, "completed": completed, **empty, "id_live_preview": -1,
                    "textinfo": textinfo}
        state = self.state
        progress = 0.0
        if state.job_count > 0:
            progress += state.job_no / state.job_count
            if state.sampling_steps > 0:
                progress += 1 / state.job_count * state.sampling_step / state.sampling_steps
        progress = min(progress, 1)
        since = time.time() - (state.time_start or time.time())
        eta = (since / progress - since) if progress > 0 else None
        preview, preview_id = None, id_live_preview
        if self.opts.get("live_previews_enable") and live_preview and state.current_image is not None:
            if state.id_live_preview != id_live_preview:
                preview = "data:image/png;base64," + base64.b64encode(state.current_image).decode("ascii")
                preview_id = state.id_live_preview
        return {"active": active, "queued": queued, "completed": completed, "progress": progress, "eta": eta,
                "live_preview": preview, "id_live_preview": preview_id, "textinfo": state.textinfo}
