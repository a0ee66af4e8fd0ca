"""``modules.shared_state.State`` and what the WebUI reads out of it: ``/sdapi/v1/progress``
(``Api.progressapi``) and ``/internal/progress`` (``modules/progress.py``, with its task ids).

``/sdapi/v1/progress`` encodes the live preview with ``encode_pil_to_base64``, which knows
only png, jpg, jpeg and webp: any other ``samples_format`` (avif, say) makes it raise
``HTTPException(500, "Invalid image format")`` while a preview exists, as the WebUI does.
"""

from __future__ import annotations

import base64
import datetime
import time
from collections import OrderedDict
from typing import Any

from jobqueue.sims.a1111.webui import HTTPError

#: The formats ``encode_pil_to_base64`` can write.
ENCODABLE = ("png", "jpg", "jpeg", "webp")


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


class Tasks:
    """``modules/progress.py``'s bookkeeping: pending, current and recently finished task ids."""

    def __init__(self) -> None:
        self.pending: OrderedDict[str, float] = OrderedDict()
        self.current: str | None = None
        self.finished: list[str] = []

    def add(self, task_id: str) -> None:
        self.pending[task_id] = time.time()

    def start(self, task_id: str) -> None:
        self.current = task_id
        self.pending.pop(task_id, None)

    def finish(self, task_id: str) -> None:
        if self.current == task_id:
            self.current = None
        self.finished.append(task_id)
        if len(self.finished) > 16:
            self.finished.pop(0)


def encode(image: bytes, samples_format: str) -> str:
    """``encode_pil_to_base64``: base64 of the image, or the 500 of an unknown format."""
    if str(samples_format).lower() not in ENCODABLE:
        raise HTTPError(500, "Invalid image format")
    return base64.b64encode(image).decode("ascii")


def progress_answer(state: State, samples_format: str, skip_current_image: bool) -> dict[str, Any]:
    """``Api.progressapi``, including its quirks (the 0.01 head start, ``job_count == -1``)."""
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
        image = encode(state.current_image, samples_format)
    return {"progress": progress, "eta_relative": eta_relative, "state": state.dict(), "current_image": image,
            "textinfo": state.textinfo}


def task_progress_answer(state: State, tasks: Tasks, request: dict[str, Any], previews: bool) -> dict[str, Any]:
    """``modules/progress.py`` ``progressapi`` for ``{"id_task", "id_live_preview", "live_preview"}``."""
    id_task = request.get("id_task")
    id_live_preview = int(request.get("id_live_preview", -1))
    active = id_task == tasks.current
    queued = id_task in tasks.pending
    completed = id_task in tasks.finished
    if not active:
        textinfo = "Waiting..."
        if queued:
            ordered = sorted(tasks.pending, key=lambda t: tasks.pending[t])
            textinfo = f"In queue: {ordered.index(id_task) + 1}/{len(ordered)}"  # type: ignore[arg-type]
        return {"active": active, "queued": queued, "completed": completed, "progress": None, "eta": None,
                "live_preview": None, "id_live_preview": -1, "textinfo": textinfo}
    progress = 0.0
    if state.job_count > 0:
        progress += state.job_no / state.job_count
        if state.sampling_steps > 0:
            progress += 1 / state.job_count * state.sampling_step / state.sampling_steps
    progress = min(progress, 1)
    since = time.time() - (state.time_start or time.time())
    eta = (since / progress - since) if progress > 0 else None
    preview, preview_id = None, id_live_preview
    if previews and bool(request.get("live_preview", True)) and state.current_image is not None:
        if state.id_live_preview != id_live_preview:
            preview = "data:image/png;base64," + base64.b64encode(state.current_image).decode("ascii")
            preview_id = state.id_live_preview
    return {"active": active, "queued": queued, "completed": completed, "progress": progress, "eta": eta,
            "live_preview": preview, "id_live_preview": preview_id, "textinfo": state.textinfo}
