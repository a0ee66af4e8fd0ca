"""The ``a1111`` connector: txt2img / img2img on one Stable Diffusion WebUI (AUTOMATIC1111 or
Forge) over its HTTP API, never hanging.

How one job runs (one at a time per WebUI: the WebUI itself runs one job at a time):

1. POST ``/sdapi/v1/txt2img`` (or ``img2img``) with ``force_task_id`` set to an id of ours. The
   WebUI answers only when the images are done, so the POST waits in a thread of its own
   (:class:`~jobqueue.connectors.a1111.post.BlockingPost`).
2. Meanwhile, every ``POLL_INTERVAL`` s, GET ``/sdapi/v1/progress?skip_current_image=false``:
   ``progress``, ``state.job_no/job_count``, ``state.sampling_step/sampling_steps``,
   ``eta_relative`` become progress reports, ``current_image`` the live preview. Until our task
   runs, POST ``/internal/progress {"id_task": ...}`` says whether the WebUI is on *our* job or
   still busy with another client's (then nothing is reported as ours).
3. The answer's base64 ``images`` are written to the output store (:mod:`jobqueue.shared.outputs`,
   ``<JOBQUEUE_OUTPUT_URL or JOBQUEUE_OUTPUT_DIR>/<job id>/``); its
   ``info`` (seed, sampler, model, version...) goes into the result.

Stall: ``/sdapi/v1/progress`` unanswered for ``stall_timeout`` seconds, or its state unchanged
for the node limit (``node_timeout``, ``JOBQUEUE_A1111_NODE_TIMEOUT``, 600 s by default: one
slow step, a hires pass or a VAE decode shows no progress) raises :class:`JobStalled` (retried
elsewhere). Another client's job that moves, and our
own checkpoint switch (``override_settings.sd_model_checkpoint``, silent while weights load),
count as alive. Cancel: POST ``/sdapi/v1/interrupt`` and ``/sdapi/v1/skip``; the WebUI stops at
its next sampling step and answers.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import logging
import threading
import time
from typing import Any

import requests

from jobqueue.config import Settings
from jobqueue.connectors.a1111.fields import ROUTES
from jobqueue.connectors.a1111.payload import request_body
from jobqueue.connectors.a1111.post import BlockingPost
from jobqueue.connectors.base import Connector, Health, Job, ProgressReporter
from jobqueue.connectors.payloads import A1111_MODELS, validate_a1111
from jobqueue.errors import ExecutionFailed, JobCancelled, JobStalled, JobTimedOut, ServiceUnavailable
from jobqueue.shared.outputs import save_output
from jobqueue.states import ConnectorStatus

log = logging.getLogger(__name__)

#: Seconds between two progress polls while a job runs.
POLL_INTERVAL = 0.5
#: Timeout (s) of each health-check request.
HEALTH_TIMEOUT = 3.0
#: How long (s) a cancelled job waits for the WebUI to stop and answer.
CANCEL_GRACE = 5.0


def image_type(data: bytes) -> str:
    """The MIME type of an encoded image, from its first bytes."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def decode_image(text: str) -> bytes:
    """Bytes of a base64 image as the WebUI sends it (bare or as a ``data:`` URI)."""
    if text.startswith("data:"):
        text = text.split(",", 1)[-1]
    return base64.b64decode(text, validate=False)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    for marker in ("Connection refused", "Connection reset", "Name or service not known", "timed out"):
        if marker in text:
            return marker.lower()
    if isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
        return "connection closed by the server"
    return text[:200]


def describe_error(status: int, body: Any) -> str:
    """One line for a WebUI error answer: FastAPI's 422 ``detail`` list or ``api_middleware``'s
    ``{"error", "detail", "errors"}``."""
    if isinstance(body, dict) and isinstance(body.get("detail"), list):
        parts = []
        for error in body["detail"]:
            loc = ".".join(str(p) for p in (error.get("loc") or []) if p != "body") or "body"
            parts.append(f"{loc}: {error.get('msg')}")
        return f"the WebUI refused the request ({status}): " + "; ".join(parts)
    if isinstance(body, dict) and (body.get("error") or body.get("detail")):
        detail = body.get("detail") or body.get("errors") or ""
        return f"the WebUI answered {status}: {body.get('error') or 'error'}: {detail}".rstrip(": ")
    return f"the WebUI answered {status}: {str(body)[:300]}"


class _Run:
    """What the job's thread knows about its request on the WebUI."""

    def __init__(self, job: Job, task_id: str, switching: str | None) -> None:
        self.job = job
        self.task_id = task_id
        #: The checkpoint ``override_settings`` asks for (None: no switch requested).
        self.switching = switching
        #: True once ``/internal/progress`` said the WebUI runs our task; None: cannot tell.
        self.ours: bool | None = False
        self.interrupted_seen = False
        self.wake = threading.Event()
        #: Liveness: the last answer of ``/sdapi/v1/progress`` and the last change of its state.
        self.last_answer = self.last_change = time.monotonic()
        self.snapshot: Any = None
        self.cancelled_at: float | None = None
        self.cancel_sent_at: float | None = None
        self.preview: str | None = None
        self.waiting_told = False


class A1111Connector(Connector):
    """Runs txt2img / img2img requests on the Stable Diffusion WebUI of this worker's GPU."""

    service = "a1111"
    example_payload = {"prompt": "a lighthouse on a cliff at dusk, oil painting", "negative_prompt": "blurry",
                       "steps": 20, "width": 512, "height": 512, "seed": 42, "sampler_name": "Euler a",
                       "cfg_scale": 7.0}
    payload_models = tuple(A1111_MODELS.values())

    def __init__(self, settings: Settings, *, gpu: int = 0) -> None:
        super().__init__(settings, gpu=gpu)
        self.base_url = settings.a1111_url_for(gpu).rstrip("/")
        self._http = requests.Session()
        #: The health loop's own session: a requests.Session is not shared between threads.
        self._health_http = requests.Session()
        self._one_at_a_time = threading.Lock()
        self._runs: dict[str, _Run] = {}
        self._runs_lock = threading.Lock()
        self._suspect = True  # ask once before the first job
        self._version: str | None = None
        self._has_task_api = True

    @classmethod
    def validate(cls, payload: Any) -> dict[str, Any]:
        return validate_a1111(payload)

    def stop(self) -> None:
        self._http.close()
        self._health_http.close()

    # -- REST ------------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, timeout: float, session: requests.Session | None = None,
                 **kwargs: Any) -> requests.Response:
        """One REST call; an unreachable WebUI raises :class:`ServiceUnavailable`."""
        try:
            return (session or self._http).request(method, f"{self.base_url}{path}",
                                                   timeout=(min(timeout, 3.0), timeout), **kwargs)
        except requests.ConnectionError as exc:
            raise ServiceUnavailable(f"the WebUI at {self.base_url} is unreachable: {_reason(exc)}",
                                     {"url": self.base_url, "path": path}) from None

    # -- health ----------------------------------------------------------------------------
    def check_health(self) -> Health:
        facts: dict[str, Any] = {"url": self.base_url}
        try:
            ping = self._request("GET", "/internal/ping", timeout=HEALTH_TIMEOUT, session=self._health_http)
            if ping.status_code not in (200, 404):  # 404: an older build without /internal/ping
                return Health(ConnectorStatus.ERROR, f"the WebUI's /internal/ping answered {ping.status_code}", facts)
            options = self._request("GET", "/sdapi/v1/options", timeout=HEALTH_TIMEOUT, session=self._health_http)
            if options.status_code == 404:
                return Health(ConnectorStatus.ERROR, f"the WebUI at {self.base_url} has no API: start it with --api",
                              facts)
            if options.status_code != 200:
                return Health(ConnectorStatus.ERROR, f"the WebUI's /sdapi/v1/options answered {options.status_code}",
                              facts)
            checkpoint = options.json().get("sd_model_checkpoint")
            progress = self._request("GET", "/sdapi/v1/progress?skip_current_image=true", timeout=HEALTH_TIMEOUT,
                                     session=self._health_http)
            busy = progress.status_code == 200 and (progress.json().get("state") or {}).get("job_count", 0) != 0
            if self._version is None:
                self._version = self._read_version()
        except ServiceUnavailable as exc:
            self._version = None  # a restarted WebUI may be another version
            return Health(ConnectorStatus.OFFLINE, str(exc), facts)
        except requests.Timeout:
            return Health(ConnectorStatus.ERROR, f"the WebUI at {self.base_url} did not answer within "
                                                 f"{HEALTH_TIMEOUT:g} s", facts)
        except (ValueError, AttributeError) as exc:
            return Health(ConnectorStatus.ERROR, f"the WebUI's answer is not what we expect: {exc}", facts)
        version = self._version or "unknown"
        facts.update({"sd_model_checkpoint": checkpoint, "version": version, "busy": busy,
                      "flavour": "forge" if version.startswith("f") else "a1111",
                      "summary": f"{checkpoint or 'no checkpoint'} · {version}"})
        return Health(ConnectorStatus.IDLE, "", facts)

    def _read_version(self) -> str | None:
        """The WebUI's version from ``/internal/sysinfo`` (asked once per server start)."""
        try:
            response = self._request("GET", "/internal/sysinfo", timeout=10.0, session=self._health_http)
            if response.status_code == 200:
                version = json.loads(response.text).get("Version")
                return str(version) if version else None
        except (ServiceUnavailable, requests.RequestException, ValueError, AttributeError):
            pass
        return None

    # -- running a job ---------------------------------------------------------------------
    def run(self, job: Job, report_progress: ProgressReporter) -> dict[str, Any]:
        payload = self.validate(job.payload)
        stall = float(payload.get("stall_timeout") or job.options.get("stall_timeout") or self.settings.stall_timeout)
        node_limit = float(payload.get("node_timeout") or job.options.get("node_timeout")
                           or self.settings.a1111_node_timeout)
        if payload.get("timeout"):
            job.options["timeout"] = payload["timeout"]
            job.deadline = job.started + payload["timeout"]
        while not self._one_at_a_time.acquire(timeout=0.1):
            job.check()
        try:
            job.check()
            self._ready()
            overrides = payload.get("override_settings") or {}
            run = _Run(job, f"jobqueue-{job.id}-{job.attempt}", overrides.get("sd_model_checkpoint"))
            with self._runs_lock:
                self._runs[job.id] = run
            report_progress(percent=0.0, message="submitting to the WebUI")
            left = (job.deadline - time.monotonic()) if job.deadline is not None else self.settings.job_timeout
            post = BlockingPost(f"{self.base_url}{ROUTES[payload['mode']]}", request_body(payload, run.task_id),
                                timeout=max(1.0, left + 5.0)).start()
            try:
                return self._follow(run, post, report_progress, stall, node_limit)
            finally:
                if not post.done.is_set():
                    post.abort()
        finally:
            with self._runs_lock:
                self._runs.pop(job.id, None)
            self._one_at_a_time.release()

    def cancel(self, job: Job) -> None:
        """Flag the job and wake its thread, which interrupts the WebUI when it runs our task."""
        job.cancelled.set()
        with self._runs_lock:
            run = self._runs.get(job.id)
        if run is not None:
            run.wake.set()

    def _ready(self) -> None:
        """Fail fast when the last job stalled or never ran and the WebUI does not answer."""
        if not self._suspect:
            return
        try:
            self._request("GET", "/internal/ping", timeout=1.5)
        except requests.Timeout:
            raise ServiceUnavailable(f"the WebUI at {self.base_url} does not answer", {"url": self.base_url}) from None
        self._suspect = False

    def _follow(self, run: _Run, post: BlockingPost, report: ProgressReporter, stall: float,
                node_limit: float) -> dict[str, Any]:
        """Poll the WebUI until its answer to the POST arrives: honour a cancel or the timeout,
        take each progress state (liveness, progress, preview), stop when it is stalled."""
        run.last_answer = run.last_change = time.monotonic()
        while True:
            if post.done.is_set():
                return self._finish(run, post, run.cancel_sent_at is not None)
            self._honour_cancel_or_timeout(run)
            state = self._poll_unless_gone(run, stall)
            now = time.monotonic()
            if state is not None:
                self._take_state(run, state, now, report)
            if post.done.is_set():
                continue
            self._check_stall(run, now, stall, node_limit)
            self._pause(run, post)

    def _honour_cancel_or_timeout(self, run: _Run) -> None:
        """A cancelled job interrupts our task once the WebUI runs it and gives up after
        ``CANCEL_GRACE`` s; a job out of time interrupts it and raises :class:`JobTimedOut`."""
        if not run.job.cancelled.is_set():
            try:
                run.job.check()
            except JobTimedOut:
                self._interrupt(run)
                raise
            return
        run.cancelled_at = run.cancelled_at or time.monotonic()
        if run.cancel_sent_at is None and run.ours is not False:
            self._interrupt(run)
            run.cancel_sent_at = time.monotonic()
        if time.monotonic() - (run.cancel_sent_at or run.cancelled_at) > CANCEL_GRACE:
            raise JobCancelled("job was cancelled" + ("; the WebUI did not stop in time" if run.cancel_sent_at
                                                      else " before the WebUI started it"),
                               {"task_id": run.task_id})

    def _poll_unless_gone(self, run: _Run, stall: float) -> dict[str, Any] | None:
        """:meth:`_poll`; a WebUI gone away cancels a cancelled job (never retried) and fails the others."""
        try:
            return self._poll(run, stall)
        except ServiceUnavailable:
            if run.job.cancelled.is_set():
                raise JobCancelled("job was cancelled; the WebUI went away", {"task_id": run.task_id}) from None
            raise

    def _take_state(self, run: _Run, state: dict[str, Any], now: float, report: ProgressReporter) -> None:
        """Note an answer and whether the WebUI moved; report our task's progress and preview,
        or once that the WebUI is busy with another client's job."""
        run.last_answer = now
        shown = state["state"]
        current = (round(float(state.get("progress") or 0), 6), shown.get("job"), shown.get("job_count"),
                   shown.get("job_no"), shown.get("sampling_step"), shown.get("sampling_steps"),
                   state.get("textinfo"), run.ours)
        if current != run.snapshot:
            run.snapshot, run.last_change = current, now
        elif run.ours is False and shown.get("job_count", 0) != 0:
            run.last_change = now  # busy with another client's job: alive, we wait our turn
        elif run.ours is not False and run.switching and shown.get("job_count") == -1:
            run.last_change = now  # our checkpoint switch: loading weights shows no progress
        if run.ours is False:
            if not run.waiting_told and shown.get("job_count", 0) != 0:
                report(message="waiting: the WebUI is busy with another client's job")
                run.waiting_told = True
            return
        if shown.get("job_count", 0) != 0:  # the flag outlives a job until the next begins
            run.interrupted_seen = bool(shown.get("interrupted")) and run.cancel_sent_at is None
        self._report(run, state, report)
        image = state.get("current_image")
        if image and image != run.preview:
            run.preview = image
            data = decode_image(image)
            run.job.report_preview(data, image_type(data))

    def _check_stall(self, run: _Run, now: float, stall: float, node_limit: float) -> None:
        """Raise :class:`JobStalled` (or, for a cancelled job, :class:`JobCancelled`) when the
        WebUI has not answered for ``stall`` s or not moved for ``node_limit`` s."""
        if now - run.last_answer <= stall and now - run.last_change <= node_limit:
            return
        self._suspect = True
        if run.job.cancelled.is_set():
            raise JobCancelled("job was cancelled; the WebUI stopped answering", {"task_id": run.task_id})
        silent = now - run.last_answer > stall
        what = "did not answer /sdapi/v1/progress" if silent else "showed no progress"
        if not silent:  # a WebUI that answers may still free itself; a silent one would not hear
            self._interrupt(run, timeout=1.0)
        limit = stall if silent else node_limit
        raise JobStalled(f"the WebUI at {self.base_url} {what} for {limit:g} s",
                         {"url": self.base_url, "task_id": run.task_id, "stall_timeout": stall,
                          "node_timeout": node_limit})

    @staticmethod
    def _pause(run: _Run, post: BlockingPost) -> None:
        """Wait until the next poll, the WebUI's answer, or a cancel, whichever comes first."""
        until = time.monotonic() + POLL_INTERVAL
        while time.monotonic() < until and not post.done.is_set() and not run.wake.is_set():
            post.done.wait(0.05)
        run.wake.clear()

    def _poll(self, run: _Run, stall: float) -> dict[str, Any] | None:
        """GET /sdapi/v1/progress (until our task runs, POST /internal/progress first: the state
        read after it is then surely ours); None when the WebUI did not answer in time. A
        refused connection raises :class:`ServiceUnavailable`."""
        timeout = max(0.5, min(3.0, stall / 2))
        try:
            if run.ours is False and self._has_task_api:
                run.ours = self._task_active(run, timeout)
            response = self._request("GET", "/sdapi/v1/progress?skip_current_image=false", timeout=timeout)
            if response.status_code != 200:
                return None
            state: dict[str, Any] = response.json()
            if not isinstance(state.get("state"), dict):
                return None
            if run.ours is False and not self._has_task_api:
                # An older build without task ids: a running job is taken to be ours.
                run.ours = None if state["state"].get("job_count", 0) != 0 else False
            return state
        except (requests.Timeout, ValueError):
            return None

    def _task_active(self, run: _Run, timeout: float) -> bool:
        """Whether the WebUI runs (or ran) our task; notes builds without /internal/progress."""
        answer = self._request("POST", "/internal/progress", timeout=timeout,
                               json={"id_task": run.task_id, "id_live_preview": -1, "live_preview": False})
        if answer.status_code == 404:
            self._has_task_api = False
            return False
        body = answer.json() if answer.status_code == 200 else {}
        return bool(body.get("active") or body.get("completed"))

    def _report(self, run: _Run, progress: dict[str, Any], report: ProgressReporter) -> None:
        shown = progress["state"]
        count, number = int(shown.get("job_count") or 0), int(shown.get("job_no") or 0)
        step, steps = int(shown.get("sampling_step") or 0), int(shown.get("sampling_steps") or 0)
        if count <= 0:
            text = f"loading checkpoint {run.switching}" if run.switching else "starting"
            report(message=text)
            return
        eta = progress.get("eta_relative")
        text = f"{shown.get('job') or 'generating'}: step {step}/{steps}"
        if isinstance(eta, (int, float)) and eta > 0:
            text += f" (WebUI eta {eta:.1f} s)"
        if steps > 0:
            # Steps done over steps to do: the WebUI's own "progress" starts at 0.01 before any step.
            done, total = min(number, count) * steps + step, count * steps
            report(percent=min(100.0 * done / total, 99.9), step=done, total_steps=total, message=text)
        else:
            report(percent=max(0.0, min(float(progress.get("progress") or 0) * 100, 99.9)), message=text)

    def _interrupt(self, run: _Run, timeout: float = 3.0) -> None:
        """Ask the WebUI to stop our task: interrupt, and skip for the batch in progress.
        Only when the WebUI runs our task (or cannot tell): never another client's job."""
        if run.ours is False:
            return
        for path in ("/sdapi/v1/interrupt", "/sdapi/v1/skip"):
            try:
                self._request("POST", path, timeout=timeout)
            except (ServiceUnavailable, requests.RequestException) as exc:
                log.warning("a1111: could not POST %s: %s", path, exc)
                return

    def _finish(self, run: _Run, post: BlockingPost, cancel_sent: bool) -> dict[str, Any]:
        job = run.job
        if post.error is not None:
            if job.cancelled.is_set():
                raise JobCancelled("job was cancelled", {"task_id": run.task_id})
            raise ServiceUnavailable(f"the WebUI at {self.base_url} is unreachable: {_reason(post.error)}",
                                     {"url": self.base_url, "task_id": run.task_id})
        try:
            body = post.json()
        except ValueError:
            body = post.data[:300].decode(errors="replace")
        if job.cancelled.is_set():
            raise JobCancelled("job was cancelled; the WebUI interrupted it" if cancel_sent else "job was cancelled",
                               {"task_id": run.task_id})
        if post.status != 200 or not isinstance(body, dict):
            raise ExecutionFailed(describe_error(post.status or 0, body),
                                  {"status": post.status, "answer": body if isinstance(body, dict) else str(body)})
        if run.interrupted_seen:
            raise ExecutionFailed("the WebUI was interrupted by another client while it ran this job",
                                  {"task_id": run.task_id})
        try:
            info = json.loads(body.get("info") or "{}")
        except ValueError:
            info = {"raw": str(body.get("info"))[:2000]}
        images = body.get("images") or []
        if not images:
            raise ExecutionFailed("the WebUI answered without images", {"task_id": run.task_id})
        files = self._write_images(job, images, info if isinstance(info, dict) else {})
        return {"files": files, "info": info, "task_id": run.task_id}

    def _write_images(self, job: Job, images: list[str], info: dict[str, Any]) -> list[dict[str, Any]]:
        """Decode every image into the output store, ``<store>/<job id>/`` (jobqueue.shared.outputs, as
        every connector does)."""
        first = int(info.get("index_of_first_image") or 0)
        seeds = list(info.get("all_seeds") or [])
        files = []
        for index, text in enumerate(images):
            job.check()
            try:
                data = decode_image(text)
            except (binascii.Error, ValueError) as exc:
                raise ExecutionFailed(f"image {index} of the WebUI's answer is not base64: {exc}", {}) from None
            mime = image_type(data)
            extension = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}.get(mime, "bin")
            if index < first:
                name = f"grid-{index:02d}.{extension}"
            else:
                seed = seeds[index - first] if index - first < len(seeds) else None
                name = f"{index - first:05d}-{seed}.{extension}" if seed is not None else f"{index - first:05d}.{extension}"
            item: dict[str, Any] = {"filename": name, "type": "grid" if index < first else "output", "mime": mime}
            try:
                item.update(save_output(self.settings, job.id, name, [data]))
            except Exception as exc:  # any store error (OSError, botocore's own) fails the job clearly
                raise ExecutionFailed(f"could not store output file {name!r}: {exc}", dict(item)) from exc
            files.append(item)
        return files
