"""The ``a1111`` connector: txt2img / img2img on one Stable Diffusion WebUI (AUTOMATIC1111 1.7+
or Forge) over its HTTP API, never hanging.

How one job runs (one at a time per WebUI: the WebUI itself runs one job at a time):

1. Abandoned requests of earlier jobs are swept (:mod:`jobqueue.connectors.a1111.abandoned`),
   the state at hand is read, and the request is written into the orphan book.
2. POST ``/sdapi/v1/txt2img`` (or ``img2img``) with ``force_task_id`` set to an id of ours. The
   WebUI answers only when the images are done, so the POST waits in a thread of its own
   (:class:`~jobqueue.connectors.a1111.post.BlockingPost`).
3. Meanwhile :class:`~jobqueue.connectors.a1111.follow.Follower` polls ``/sdapi/v1/progress``,
   deciding at every poll whether the state is our job's (task ids on 1.8+ and Forge, job order
   on 1.7 and ``--nowebui``): progress, previews, liveness, cancel, timeout, stall.
4. The answer's base64 ``images`` are written to the output store
   (:mod:`jobqueue.shared.outputs`, ``<JOBQUEUE_OUTPUT_URL or JOBQUEUE_OUTPUT_DIR>/<job id>/``);
   its ``info`` goes into the result once it shows the sampler and checkpoint asked for
   (:func:`~jobqueue.connectors.a1111.answers.unhonoured`).

Out of memory (a 500 whose error is torch's ``OutOfMemoryError`` or says "CUDA out of
memory") is :class:`~jobqueue.errors.OutOfMemory`: the worker moves the job to a larger card.
The WebUI dying under the request (its connection reset or closed mid-request, its polls
refused) is :class:`~jobqueue.errors.ServerCrashed`, "the WebUI exited or restarted", at once.

A job given up while the WebUI still has its request (cancel, timeout, stall) leaves it in the
orphan book; it is interrupted when the WebUI begins it, never run in full ahead of the retry.
"""

from __future__ import annotations

import binascii
import json
import logging
import threading
import time
from collections.abc import Mapping
from http.client import IncompleteRead
from typing import Any

import requests

from jobqueue.config import Settings
from jobqueue.connectors.a1111 import abandoned
from jobqueue.connectors.a1111.answers import (
    decode_image,
    describe_error,
    image_type,
    reason,
    unhonoured,
    unknown_sampler,
)
from jobqueue.connectors.a1111.client import WebUIClient, has_task_ids
from jobqueue.connectors.a1111.fields import ROUTES
from jobqueue.connectors.a1111.follow import Follower, Run
from jobqueue.connectors.a1111.models import checkpoint_aliases, required_checkpoint
from jobqueue.connectors.a1111.ownership import JobOrder
from jobqueue.connectors.a1111.payload import request_body
from jobqueue.connectors.a1111.post import BlockingPost
from jobqueue.connectors.base import Connector, Health, Job, ProgressReporter
from jobqueue.connectors.payloads import A1111_MODELS, validate_a1111
from jobqueue.errors import ExecutionFailed, JobCancelled, OutOfMemory, ServerCrashed, ServiceUnavailable
from jobqueue.shared.outputs import save_output
from jobqueue.states import ConnectorStatus

__all__ = ["A1111Connector", "decode_image", "describe_error", "image_type"]

log = logging.getLogger(__name__)

#: Timeout (s) of each health-check request.
HEALTH_TIMEOUT = 3.0


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
        self._client = WebUIClient(self.base_url)
        #: The health loop's own client: a requests.Session is not shared between threads.
        self._health = WebUIClient(self.base_url)
        self._one_at_a_time = threading.Lock()
        self._sweeping = threading.Lock()
        self._runs: dict[str, Run] = {}
        self._runs_lock = threading.Lock()
        self._suspect = True  # ask once before the first job
        self._version: str | None = None
        self._probed = False
        #: The WebUI's sampler names (``/sdapi/v1/samplers``), asked once per server start.
        self._samplers: set[str] | None = None

    @classmethod
    def validate(cls, payload: Any) -> dict[str, Any]:
        return validate_a1111(payload)

    @classmethod
    def required_models(cls, payload: Mapping[str, Any]) -> list[str]:
        """The checkpoint of ``override_settings`` (any alias the WebUI takes): the job runs
        where the WebUI has it, first where it is loaded (warm routing)."""
        return required_checkpoint(payload)

    def capabilities(self, details: Mapping[str, Any]) -> dict[str, Any] | None:
        """The WebUI's checkpoints (warm and model routing) and its card's VRAM (``requires.vram_gb``
        routing, out-of-memory move-up); None when either could not be read this time (the last
        known capabilities stay)."""
        models, vram = self._checkpoints(), self._vram()
        return None if models is None or vram is None else {**models, **vram}

    def _checkpoints(self) -> dict[str, Any] | None:
        """The WebUI's checkpoints under every alias (``/sdapi/v1/sd-models``)."""
        try:
            res = self._health.request("GET", "/sdapi/v1/sd-models", timeout=HEALTH_TIMEOUT)
            if res.status_code != 200:
                return None
            return {"models": {"checkpoints": checkpoint_aliases(res.json())}}
        except Exception:  # must not raise: the last known capabilities stay
            log.warning("could not read the WebUI's checkpoints", exc_info=True)
            return None

    def stop(self) -> None:
        """Close the sessions; requests still on the WebUI stay in the orphan book."""
        with self._runs_lock:
            following = list(self._runs.values())
        for run in following:
            self.orphans.add(run.task_id, reason="worker stopped")
        self.orphans.flush()
        self._client.close()
        self._health.close()

    # -- health ----------------------------------------------------------------------------
    def check_health(self) -> Health:
        facts: dict[str, Any] = {"url": self.base_url}
        client = self._health
        try:
            ping = client.request("GET", "/internal/ping", timeout=HEALTH_TIMEOUT)
            if ping.status_code not in (200, 404):  # 404: an older build without /internal/ping
                return Health(ConnectorStatus.ERROR, f"the WebUI's /internal/ping answered {ping.status_code}", facts)
            options = client.request("GET", "/sdapi/v1/options", timeout=HEALTH_TIMEOUT)
            if options.status_code == 404:
                return Health(ConnectorStatus.ERROR, f"the WebUI at {self.base_url} has no API: start it with --api",
                              facts)
            if options.status_code != 200:
                return Health(ConnectorStatus.ERROR, f"the WebUI's /sdapi/v1/options answered {options.status_code}",
                              facts)
            checkpoint = options.json().get("sd_model_checkpoint")
            progress = client.request("GET", "/sdapi/v1/progress?skip_current_image=true", timeout=HEALTH_TIMEOUT)
            busy = progress.status_code == 200 and (progress.json().get("state") or {}).get("job_count", 0) != 0
            if self._version is None:
                self._learn_version(self._read_version(client))
            self._sweep(client, HEALTH_TIMEOUT)
        except ServiceUnavailable as exc:
            self._version, self._probed, self._samplers = None, False, None  # a restarted WebUI may differ
            return Health(ConnectorStatus.OFFLINE, str(exc), facts)
        except requests.Timeout:
            return Health(ConnectorStatus.ERROR, f"the WebUI at {self.base_url} did not answer within "
                                                 f"{HEALTH_TIMEOUT:g} s", facts)
        except (ValueError, AttributeError) as exc:
            return Health(ConnectorStatus.ERROR, f"the WebUI's answer is not what we expect: {exc}", facts)
        version = self._version or "unknown"
        facts.update({"sd_model_checkpoint": checkpoint, "version": version, "busy": busy,
                      "flavour": "forge" if version.startswith("f") else "a1111",
                      "task_ids": self._client.task_ids,
                      "summary": f"{checkpoint or 'no checkpoint'} · {version}"})
        return Health(ConnectorStatus.IDLE, "", facts)

    def _vram(self) -> dict[str, Any] | None:
        """The card's VRAM from ``GET /sdapi/v1/memory`` (``cuda.system.total``, bytes): what
        ``requires.vram_gb`` routing and an out-of-memory move-up compare with. A WebUI without
        CUDA reports none (``{}``); None when it could not be read this time."""
        try:
            response = self._health.request("GET", "/sdapi/v1/memory", timeout=HEALTH_TIMEOUT)
            system = (response.json().get("cuda") or {}).get("system") if response.status_code == 200 else None
        except (ServiceUnavailable, requests.RequestException, ValueError, AttributeError):
            return None
        if not isinstance(system, dict) or not isinstance(system.get("total"), (int, float)):
            return {}
        free = system.get("free")
        return {"vram_total_gb": system["total"] / 2**30,
                "vram_free_gb": free / 2**30 if isinstance(free, (int, float)) else None}

    @staticmethod
    def _read_version(client: WebUIClient) -> str | None:
        """The WebUI's version from ``/internal/sysinfo`` (asked once per server start)."""
        try:
            response = client.request("GET", "/internal/sysinfo", timeout=10.0)
            if response.status_code == 200:
                version = json.loads(response.text).get("Version")
                return str(version) if version else None
        except (ServiceUnavailable, requests.RequestException, ValueError, AttributeError):
            pass
        return None

    def _learn_version(self, version: str | None) -> None:
        """Note the version and whether it keeps task ids for API requests (1.8+, Forge)."""
        self._version = version
        known = has_task_ids(version)
        if known is not None:
            self._client.task_ids = self._health.task_ids = known
            self._probed = True

    def _sweep(self, client: WebUIClient, timeout: float) -> None:
        """Sweep this WebUI's abandoned requests (one sweep at a time)."""
        with self._runs_lock:
            following = {run.task_id for run in self._runs.values()}
        with self._sweeping:
            abandoned.sweep(client, self.orphans, following, timeout)

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
            self._ready(stall)
            overrides = payload.get("override_settings") or {}
            run = Run(job, f"jobqueue-{job.id}-{job.attempt}", overrides.get("sd_model_checkpoint"))
            return self._run(run, payload, report_progress, stall, node_limit)
        finally:
            self._one_at_a_time.release()

    def _run(self, run: Run, payload: dict[str, Any], report: ProgressReporter, stall: float,
             node_limit: float) -> dict[str, Any]:
        """Post the request (booked first), follow it, read its answer; strike it out of the
        orphan book once the WebUI answered, keep it there when we gave up on it."""
        job, timeout = run.job, max(0.5, min(3.0, stall / 2))
        wrong = unknown_sampler(payload, self._sampler_names(timeout))
        if wrong is not None:
            raise ExecutionFailed(wrong, {"sampler_name": payload.get("sampler_name") or payload.get("sampler_index")})
        if not self._client.task_ids:
            run.order = self._job_order(timeout)
        with self._runs_lock:
            self._runs[job.id] = run
        self.orphans.add(run.task_id, url=self.base_url, job_id=job.id, by_order=not self._client.task_ids)
        report(percent=0.0, message="submitting to the WebUI")
        left = (job.deadline - time.monotonic()) if job.deadline is not None else self.settings.job_timeout
        post = BlockingPost(f"{self.base_url}{ROUTES[payload['mode']]}", request_body(payload, run.task_id),
                            timeout=max(1.0, left + 5.0)).start()
        follower = Follower(self._client, run, post, report, stall=stall, node_limit=node_limit,
                            sweep=lambda t: self._sweep(self._client, t),
                            orphan_began=lambda: abandoned.forget_by_order(self.orphans, self._client,
                                                                           {run.task_id}, 1))
        try:
            try:
                follower.follow()
                return self._finish(run, payload, post)
            except ServiceUnavailable as exc:
                raise self._crashed(exc, run, post) from None
        finally:
            self._suspect = self._suspect or follower.suspect
            if not post.done.is_set():
                post.abort()
                self.orphans.add(run.task_id, reason="abandoned")
            elif post.error is None:
                self.orphans.discard(run.task_id)
            with self._runs_lock:
                self._runs.pop(job.id, None)

    def _crashed(self, exc: ServiceUnavailable, run: Run, post: BlockingPost) -> ServiceUnavailable:
        """``exc`` as :class:`ServerCrashed` when the WebUI died under the posted request: the
        POST's connection was cut (not refused: it was never sent then), or a poll was refused
        while the POST was still waiting; else ``exc`` as it is."""
        if isinstance(exc, ServerCrashed) or run.job.cancelled.is_set():
            return exc
        error = post.error
        cut = isinstance(error, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, IncompleteRead))
        refused_meanwhile = error is None and "unreachable" in exc.message
        if not (cut or refused_meanwhile) or post.aborted:
            return exc
        how = f"its connection was cut mid-request ({reason(error)})" if error is not None else \
            "it refused connections while it ran the request"
        return ServerCrashed(f"the WebUI at {self.base_url} exited or restarted: {how}",
                             {"url": self.base_url, "task_id": run.task_id})

    def _sampler_names(self, timeout: float) -> set[str]:
        """The WebUI's sampler names (empty when it does not say: the answer's info is checked then)."""
        if self._samplers is None:
            try:
                response = self._client.request("GET", "/sdapi/v1/samplers", timeout=timeout)
                listed = response.json() if response.status_code == 200 else []
                self._samplers = {str(s["name"]) for s in listed if isinstance(s, dict) and s.get("name")}
            except (requests.Timeout, ValueError, TypeError):
                return set()
        return self._samplers

    def _job_order(self, timeout: float) -> JobOrder:
        """Without task ids: the state when we post, and our abandoned requests ahead of ours
        (none when the WebUI is idle: it has run them all)."""
        response = self._client.request("GET", "/sdapi/v1/progress?skip_current_image=true", timeout=timeout)
        shown = (response.json().get("state") or {}) if response.status_code == 200 else {}
        if int(shown.get("job_count") or 0) == 0:
            abandoned.forget_by_order(self.orphans, self._client, ())
            return JobOrder(None, 0)
        return JobOrder(shown, abandoned.queued_by_order(self.orphans, self._client, ()))

    def cancel(self, job: Job) -> None:
        """Flag the job and wake its thread, which interrupts the WebUI when it runs our job."""
        job.cancelled.set()
        with self._runs_lock:
            run = self._runs.get(job.id)
        if run is not None:
            run.wake.set()

    def _ready(self, stall: float) -> None:
        """Fail fast when the last job stalled or never ran and the WebUI does not answer;
        learn once whether it keeps task ids; sweep abandoned requests before posting."""
        timeout = max(0.5, min(3.0, stall / 2))
        if self._suspect:
            try:
                self._client.request("GET", "/internal/ping", timeout=1.5)
            except requests.Timeout:
                raise ServiceUnavailable(f"the WebUI at {self.base_url} does not answer",
                                         {"url": self.base_url}) from None
            self._suspect = False
        try:
            if not self._probed:
                self._learn_version(self._read_version(self._client))
                if not self._probed:  # no version: ask the route itself
                    self._client.task("jobqueue-probe", timeout)
                    self._probed = True
            self._sweep(self._client, timeout)
        except requests.Timeout:
            self._suspect = True
            raise ServiceUnavailable(f"the WebUI at {self.base_url} does not answer", {"url": self.base_url}) from None

    def _finish(self, run: Run, payload: dict[str, Any], post: BlockingPost) -> dict[str, Any]:
        """The WebUI's answer as the job's result, or the error it amounts to."""
        job = run.job
        if post.error is not None:
            if job.cancelled.is_set():
                raise JobCancelled("job was cancelled", {"task_id": run.task_id})
            raise ServiceUnavailable(f"the WebUI at {self.base_url} is unreachable: {reason(post.error)}",
                                     {"url": self.base_url, "task_id": run.task_id})
        try:
            body = post.json()
        except ValueError:
            body = post.data[:300].decode(errors="replace")
        if job.cancelled.is_set():
            raise JobCancelled("job was cancelled; the WebUI interrupted it" if run.cancel_sent_at is not None
                               else "job was cancelled", {"task_id": run.task_id})
        if post.status != 200 or not isinstance(body, dict):
            message = describe_error(post.status or 0, body)
            if post.status == 500 and isinstance(body, dict) and (
                    body.get("error") == "OutOfMemoryError" or "CUDA out of memory" in message):
                raise OutOfMemory(f"out of GPU memory: {message}", {"status": post.status, "answer": body})
            if isinstance(body, dict) and body.get("error") == "KeyError" and payload.get("override_settings"):
                message += " (override_settings names an option this WebUI does not have)"
            raise ExecutionFailed(message, {"status": post.status,
                                            "answer": body if isinstance(body, dict) else str(body)})
        if run.interrupted_seen:
            raise ExecutionFailed("the WebUI was interrupted by another client while it ran this job",
                                  {"task_id": run.task_id})
        try:
            info = json.loads(body.get("info") or "{}")
        except ValueError:
            info = {"raw": str(body.get("info"))[:2000]}
        info = info if isinstance(info, dict) else {"raw": info}
        wrong = unhonoured(payload, info)
        if wrong is not None:
            raise ExecutionFailed(wrong, {"task_id": run.task_id, "sampler_name": info.get("sampler_name"),
                                          "sd_model_name": info.get("sd_model_name"),
                                          "sd_model_hash": info.get("sd_model_hash")})
        images = body.get("images") or []
        if not images:
            raise ExecutionFailed("the WebUI answered without images", {"task_id": run.task_id})
        files = self._write_images(job, images, info)
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
