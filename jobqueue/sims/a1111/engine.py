"""The simulated WebUI's insides: the queue lock, task ids, options and a model-free
``process_images`` that takes real time per step.

It follows the WebUI's own order of events (``modules/api/api.py`` ``text2imgapi``,
``modules/processing.py`` ``process_images``): the sampler is resolved (per version: a 404 up
to 1.8, a silent fallback from 1.9 and on Forge), the task is queued, waits for the one queue
lock, ``state.begin()``, ``start_task()`` (1.8+: older WebUIs keep no task ids for API
requests), the checkpoint of ``override_settings`` is loaded (or, without one, the checkpoint
of the options, reloaded silently when an earlier override left another in memory), each
override is set (an unknown option: ``KeyError``, a 500), then ``n_iter`` batches of ``steps``
sampling steps, each honouring ``interrupt`` and ``skip`` at the next step; an interrupted
batch still yields its (partial) images, as the WebUI decodes the partial latent. The lock is
released *before* the images are base64-encoded (``encode_seconds``), so the next client's job
already runs while this answer is being written. Images are solid-colour PNGs whose colour
follows the seed and prompt, so the same request gives the same bytes.

Out of memory: a request fails with torch's ``OutOfMemoryError`` (500, "CUDA out of memory")
when ``oom_next`` asks for it, or when :func:`~jobqueue.sims.a1111.webui.vram_needed_gb`
(2 GB + 1.5 GB per megapixel of ``width × height × batch_size``) exceeds ``vram_gb``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import random
import string
import struct
import time
import zlib
from typing import Any

from jobqueue.sims.a1111.state import State, Tasks, encode, progress_answer, task_progress_answer
from jobqueue.sims.a1111.webui import (
    CHECKPOINTS,
    DEFAULT_CHECKPOINT,
    DEFAULT_OPTIONS,
    DEFAULT_VRAM_GB,
    FORGE_VERSION,
    VERSIONS,
    HTTPError,
    oom_error,
    parse_version,
    resolve_checkpoint,
    resolve_sampler,
    vram_needed_gb,
)
from jobqueue.sims.comfyui.png import solid_png

__all__ = ["CHECKPOINTS", "Engine", "HTTPError"]


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


@dataclasses.dataclass
class _Processed:
    """What ``process_images`` hands back to the route: images still to encode, and ``info``."""

    images: list[bytes]
    info: dict[str, Any]


class Engine:
    """One WebUI's generation side: state, options, queue lock and task bookkeeping."""

    def __init__(self, flavour: str = "a1111", *, step_seconds: float = 0.05, load_seconds: float = 1.0,
                 version: str = "1.10", vram_gb: float = DEFAULT_VRAM_GB) -> None:
        self.flavour = flavour
        self.release = (1, 10) if flavour == "forge" else parse_version(version)
        self.state = State()
        #: Seconds per sampling step, per checkpoint load, and to encode one answer's images.
        self.step_seconds = step_seconds
        self.load_seconds = load_seconds
        self.encode_seconds = 0.05
        #: Simulated VRAM (GB), and how many coming requests fail out of memory whatever their size.
        self.vram_gb = vram_gb
        self.oom_next = 0
        self.opts: dict[str, Any] = dict(DEFAULT_OPTIONS)
        #: The checkpoint in memory (``override_settings`` may restore the option afterwards).
        self.loaded = DEFAULT_CHECKPOINT
        self.loads = 0
        self.lock = asyncio.Lock()
        #: Cleared while frozen: steps and loads wait here.
        self.thawed = asyncio.Event()
        self.thawed.set()
        self.tasks = Tasks()
        #: Per request (by ``force_task_id``, even where the WebUI ignores it): steps sampled, interrupted.
        self.runs: dict[str, dict[str, Any]] = {}
        self._record: dict[str, Any] | None = None
        self.generated = 0

    @property
    def task_ids(self) -> bool:
        """True from 1.8 on: API requests get task ids (``force_task_id``, ``/internal/progress``)."""
        return self.release >= (1, 8)

    @property
    def version(self) -> str:
        if self.flavour == "forge":
            return FORGE_VERSION
        return VERSIONS.get(f"{self.release[0]}.{self.release[1]}", f"v{self.release[0]}.{self.release[1]}.0")

    @staticmethod
    def create_task_id(task_type: str) -> str:
        res = "".join(random.choices(string.ascii_uppercase + string.digits, k=7))
        return f"task({task_type}-{res})"

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
            self.loads += 1

    def set_options(self, data: dict[str, Any]) -> str | None:
        """``POST /sdapi/v1/options``'s checks: the checkpoint to load (an alias is resolved),
        a RuntimeError for an unknown checkpoint and a KeyError for an unknown option."""
        checkpoint = data.get("sd_model_checkpoint")
        title = resolve_checkpoint(checkpoint) if checkpoint is not None else None
        if checkpoint is not None and title is None:
            raise HTTPError(500, f"model {checkpoint!r} not found", "RuntimeError")
        for key, value in data.items():
            if key not in self.opts and value is not None:
                raise HTTPError(500, repr(key), "KeyError")
        return title

    # -- the routes ------------------------------------------------------------------------
    async def generate(self, mode: str, request: dict[str, Any]) -> dict[str, Any]:
        """Run one txt2img/img2img request the WebUI's way; return the response body."""
        given = request.get("force_task_id")
        task_id = (given or self.create_task_id(mode)) if self.task_ids else None
        if mode == "img2img" and request.get("init_images") is None:
            raise HTTPError(404, "Init image not found")
        sampler, scheduler = resolve_sampler(request.get("sampler_name") or request.get("sampler_index"),
                                             request.get("scheduler"), self.release, self.flavour)
        record = self.runs.setdefault(str(given or task_id or f"request-{len(self.runs)}"),
                                      {"steps": 0, "interrupted": False, "started": None, "ended": None})
        if task_id is not None:
            self.tasks.add(task_id)
        try:
            async with self.lock:
                processed = await self._locked(mode, request, task_id, record, (sampler, scheduler or "Automatic"))
        finally:
            if task_id is not None:
                self.tasks.pending.pop(task_id, None)
        return await self._answer(mode, request, processed)

    async def _locked(self, mode: str, request: dict[str, Any], task_id: str | None, record: dict[str, Any],
                      sampler: tuple[str, str]) -> _Processed:
        """The part under the queue lock: ``state.begin``, ``start_task``, ``process_images``,
        ``finish_task`` (skipped when it raised, as the WebUI does), ``state.end``."""
        self.state.begin(job=f"scripts_{mode}")
        record["started"] = time.time()
        self._record = record
        if task_id is not None:
            self.tasks.start(task_id)
        try:
            processed = await self._process(request, sampler)
            if task_id is not None:
                self.tasks.finish(task_id)
            return processed
        finally:
            record["interrupted"] = self.state.interrupted
            record["ended"] = time.time()
            self._record = None
            self.state.end()

    async def _answer(self, mode: str, request: dict[str, Any], processed: _Processed) -> dict[str, Any]:
        """After the lock: encode the images (``encode_seconds``; the options as restored)."""
        send = request.get("send_images", True)
        await self._wait(self.encode_seconds)
        images = [encode(image, self.opts.get("samples_format", "png")) for image in processed.images] if send else []
        parameters = dict(request)
        if mode == "img2img" and not request.get("include_init_images"):
            parameters["init_images"] = None
            parameters["mask"] = None
        parameters.pop("include_init_images", None)
        return {"images": images, "parameters": parameters, "info": json.dumps(processed.info)}

    async def _process(self, request: dict[str, Any], sampler: tuple[str, str]) -> _Processed:
        """``process_images`` under the request's ``override_settings`` (restored afterwards
        unless it asks not to): the checkpoint, each option, the memory check, the batches."""
        stored = dict(self.opts)
        overrides = dict(request.get("override_settings") or {})
        checkpoint = resolve_checkpoint(overrides.get("sd_model_checkpoint"))
        try:
            if checkpoint is None:  # none asked, or unknown: dropped, the options' checkpoint (re)loaded
                overrides.pop("sd_model_checkpoint", None)
                await self.load_checkpoint(resolve_checkpoint(self.opts["sd_model_checkpoint"]) or DEFAULT_CHECKPOINT)
            for key, value in overrides.items():
                if key not in self.opts and value is not None:
                    raise HTTPError(500, repr(key), "KeyError")
                self.opts[key] = value
                if key == "sd_model_checkpoint" and checkpoint is not None:
                    await self.load_checkpoint(checkpoint)
            params = _Params.of(request)
            self._check_memory(params)
            images, infotexts = await self._run_batches(params, self._infotext(request, params, sampler[0], sampler[1]))
            return _Processed(images, self._info(request, params, sampler[0], len(images), infotexts))
        finally:
            if request.get("override_settings_restore_afterwards", True):
                for key in overrides:  # setattr(opts, k, v): the option only, no reload
                    if key in stored:
                        self.opts[key] = stored[key]

    def _check_memory(self, params: _Params) -> None:
        """Raise torch's out-of-memory error on demand or when the request does not fit."""
        needed = vram_needed_gb(params.width, params.height, params.batch)
        if self.oom_next > 0:
            self.oom_next -= 1
            raise oom_error(max(needed, self.vram_gb + 0.5), self.vram_gb)
        if needed > self.vram_gb:
            raise oom_error(needed, self.vram_gb)

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
            if self._record is not None:
                self._record["steps"] += 1
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

    # -- progress --------------------------------------------------------------------------
    def progress(self, skip_current_image: bool) -> dict[str, Any]:
        return progress_answer(self.state, str(self.opts.get("samples_format", "png")), skip_current_image)

    def task_progress(self, request: dict[str, Any]) -> dict[str, Any]:
        return task_progress_answer(self.state, self.tasks, request, bool(self.opts.get("live_previews_enable")))
