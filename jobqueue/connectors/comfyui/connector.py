"""The ``comfyui`` connector: run an API-format workflow on one ComfyUI, never hang.

How one job runs (the protocol details live in :mod:`jobqueue.connectors.comfyui.protocol`):

1. The websocket ``/ws?clientId=<ours>`` is open before anything is posted (it stays open
   between jobs; a reader thread reconnects it with capped backoff).
2. The payload's input images (``images``) are fetched and uploaded into ``jobqueue/<job id>/``
   of ComfyUI's input folder, and the loader nodes renamed to them
   (:mod:`jobqueue.connectors.comfyui.uploads`).
3. POST /prompt with our ``client_id`` and a fresh ``prompt_id``; a 400 fails the job at
   once with ComfyUI's error type, message and node errors.
4. Messages for our prompt move a :class:`PromptTracker`; progress is reported from it.
5. Whenever the socket has been quiet for ``QUIET_POLL`` seconds (and right after the POST
   when the socket was not open), GET /queue and /history/{id} tell whether the prompt
   already ended, is still queued/running, or was lost. With the socket open, the happy path
   makes no poll: a cached run's end arrives as a message within milliseconds.
6. Every end is confirmed through GET /history/{id} (waiting as long as /queue lists the prompt:
   ComfyUI may unload its models between ``execution_success`` and the history, see
   :mod:`jobqueue.connectors.comfyui.outcome`), except a success the websocket told in full
   (:func:`~jobqueue.connectors.comfyui.outcome.told_by_socket`); outputs are fetched via GET /view into the
   output store, ``<JOBQUEUE_OUTPUT_URL or JOBQUEUE_OUTPUT_DIR>/<job id>/`` (jobqueue.shared.outputs).

A 200 to POST /prompt with ``node_errors`` (some outputs invalid: ComfyUI runs the others)
fails the job with them, or with the payload's ``partial_outputs: "warn"`` runs the valid ones
and lists the others under the result's ``warnings``.

The REST calls live in :mod:`jobqueue.connectors.comfyui.rest`, the socket and the routing of
its messages in :mod:`jobqueue.connectors.comfyui.ws`, the loop that follows a prompt to its end
in :mod:`jobqueue.connectors.comfyui.follow`, the payload rules in
:mod:`jobqueue.connectors.payloads` (the example workflow in :mod:`jobqueue.connectors.comfyui.payload`).

Liveness, not silence (ComfyUI sends nothing while a node without a progress bar runs): the
job is stalled (:class:`JobStalled`, retried elsewhere) only when ComfyUI stops answering (no
websocket message and no answer to a short GET /queue for ``stall_timeout`` s), or when the
prompt has been listed as running with no message at all for longer than ``node_timeout``. A
prompt that left the queue without a result is lost (:class:`ServiceUnavailable`). The job's
absolute timeout comes from ``job.check()``. A server that died is told from a stall at once
(:class:`ServerCrashed`, "ComfyUI exited or restarted": its connections refused mid-prompt with
``/system_stats`` refused too, or back without our prompt in queue or history, see
:meth:`ComfyUIConnector._crashed`); out of GPU memory is :class:`OutOfMemory` (the worker moves
the job to a larger card; with ``JOBQUEUE_COMFYUI_FREE_AFTER_OOM`` the next job first
``POST /free``s).

Every prompt is written into the connector's orphan book before it is posted and struck out
when ComfyUI confirms it ended; an abandoned one is deleted or interrupted as soon as ComfyUI
answers again, before the next job (see :mod:`jobqueue.connectors.orphans`). Binary preview
frames go to ``job.report_preview``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import requests

from jobqueue.config import Settings
from jobqueue.connectors.base import Connector, Health, Job, ProgressReporter
from jobqueue.connectors.comfyui import models as comfyui_models
from jobqueue.connectors.comfyui.follow import PromptFollower
from jobqueue.connectors.comfyui.outcome import (
    await_history,
    judge,
    partial_failure,
    partial_warnings,
    socket_tells_all,
    told_by_socket,
    without_history,
)
from jobqueue.connectors.comfyui.payload import EXAMPLE_WORKFLOW
from jobqueue.connectors.comfyui.protocol import (
    PromptTracker,
    describe_validation_error,
    output_files,
    queue_position,
)
from jobqueue.connectors.comfyui.rest import ComfyUIRest, reason
from jobqueue.connectors.comfyui.uploads import InputUploader
from jobqueue.connectors.comfyui.ws import Mailbox, PromptRouter, WebSocketListener
from jobqueue.connectors.payloads import ComfyUIPayload, validate_comfyui
from jobqueue.errors import (
    ExecutionFailed,
    JobStalled,
    JobTimedOut,
    OutOfMemory,
    ServerCrashed,
    ServiceNotReached,
    ServiceUnavailable,
)
from jobqueue.shared.outputs import OutputStore, save_output
from jobqueue.states import ConnectorStatus

log = logging.getLogger(__name__)

#: Timeout (s) of GET /system_stats in health checks.
HEALTH_TIMEOUT = 3.0
#: Longest wait (s) for the websocket before a job starts.
CONNECT_WAIT = 5.0
#: Longest a job waits (s) for abandoned prompts to leave ComfyUI's queue before it posts its own.
ORPHAN_WAIT = 10.0
#: Longest a health check waits (s) for abandoned prompts to leave ComfyUI's queue.
ORPHAN_HEALTH_WAIT = 5.0
#: Seconds between two stop requests for the same abandoned prompt.
ORPHAN_RESEND = 1.0

__all__ = ["EXAMPLE_WORKFLOW", "ComfyUIConnector"]


class ComfyUIConnector(Connector):
    """Runs API-format workflows on the ComfyUI of this worker's GPU."""

    service = "comfyui"
    example_payload = {"workflow": EXAMPLE_WORKFLOW}
    payload_models = (ComfyUIPayload,)

    def __init__(self, settings: Settings, *, gpu: int = 0) -> None:
        super().__init__(settings, gpu=gpu)
        self.base_url = settings.comfyui_url_for(gpu).rstrip("/")
        #: One stable client id for the connector's life: the websocket and every prompt use it.
        self.client_id = uuid.uuid4().hex
        ws_base = "ws" + self.base_url[4:] if self.base_url.startswith("http") else self.base_url
        self._router = PromptRouter()
        self._listener = WebSocketListener(f"{ws_base}/ws?clientId={self.client_id}", self._router.dispatch,
                                           self._router.connection_changed)
        self._rest = ComfyUIRest(self.base_url)
        self._suspect = False
        #: Prompts this process is following right now (never cleaned up as orphans).
        self._active: set[str] = set()
        self._orphan_lock = threading.Lock()
        self._closing = threading.Event()
        #: The last job ran out of memory: ``POST /free`` before the next one (when the setting asks).
        self._free_next = False
        #: (websocket generation, whether that server's messages name every output): asked once per connection.
        self._tells: tuple[int, bool] | None = None
        self._store: OutputStore | None = None

    # -- payload ---------------------------------------------------------------------------
    @classmethod
    def validate(cls, payload: Any) -> dict[str, Any]:
        return validate_comfyui(payload)

    @classmethod
    def required_models(cls, payload: Mapping[str, Any]) -> list[str]:
        return comfyui_models.workflow_models(payload.get("workflow"))

    def capabilities(self, details: Mapping[str, Any]) -> dict[str, Any] | None:
        return comfyui_models.capabilities(self.base_url, details, HEALTH_TIMEOUT)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._listener.start()

    def stop(self) -> None:
        """Close the socket; prompts still running stay in the orphan book for the next start."""
        self._closing.set()
        for prompt_id in list(self._active):
            self.orphans.add(prompt_id, reason="worker stopped")
            self._rest.stop_prompt(prompt_id, timeout=1.0)
        self.orphans.flush()
        self._listener.stop()
        self._rest.close()

    # -- health ----------------------------------------------------------------------------
    def check_health(self) -> Health:
        url = f"{self.base_url}/system_stats"
        try:
            response = requests.get(url, timeout=(HEALTH_TIMEOUT, HEALTH_TIMEOUT))
        except requests.ConnectionError as exc:
            return Health(ConnectorStatus.OFFLINE, f"ComfyUI at {self.base_url} is unreachable: {reason(exc)}",
                          {"url": self.base_url})
        except requests.Timeout:
            return Health(ConnectorStatus.ERROR, f"ComfyUI at {self.base_url} did not answer within {HEALTH_TIMEOUT} s",
                          {"url": self.base_url})
        if response.status_code != 200:
            return Health(ConnectorStatus.ERROR, f"ComfyUI /system_stats answered {response.status_code}",
                          {"url": self.base_url})
        try:
            stats = response.json()
            system = stats.get("system") or {}
            devices = [{k: d.get(k) for k in ("name", "type", "vram_total", "vram_free")} for d in stats.get("devices") or []]
        except (ValueError, AttributeError) as exc:
            return Health(ConnectorStatus.ERROR, f"ComfyUI /system_stats is not what we expect: {exc}", {"url": self.base_url})
        self._listener.nudge()  # ComfyUI answers: reconnect the websocket now, not after its backoff
        if self._listener.connected.is_set():
            self._tells = (self._listener.generation, socket_tells_all(stats))
        try:
            left = self.clean_orphans(timeout=HEALTH_TIMEOUT, wait=ORPHAN_HEALTH_WAIT)
        except ServiceUnavailable as exc:
            return Health(ConnectorStatus.ERROR, f"cannot remove abandoned prompts: {exc}", {"url": self.base_url})
        if left:
            return Health(ConnectorStatus.ERROR, f"waiting for ComfyUI to stop {len(left)} abandoned prompt(s): "
                          f"{', '.join(sorted(left))}", {"url": self.base_url, "orphans": sorted(left)})
        return Health(ConnectorStatus.IDLE, "", {
            "url": self.base_url,
            "comfyui_version": system.get("comfyui_version"),
            "python_version": system.get("python_version"),
            "pytorch_version": system.get("pytorch_version"),
            "devices": devices,
            "websocket": "connected" if self._listener.connected.is_set() else "disconnected",
        })

    # -- running a job ---------------------------------------------------------------------
    def run(self, job: Job, report_progress: ProgressReporter) -> dict[str, Any]:
        payload = self.validate(job.payload)
        stall = float(payload.get("stall_timeout") or job.options.get("stall_timeout") or self.settings.stall_timeout)
        node_limit = float(payload.get("node_timeout") or job.options.get("node_timeout")
                           or self.settings.comfyui_node_timeout)
        if payload.get("timeout"):
            job.options["timeout"] = payload["timeout"]
            job.deadline = job.started + payload["timeout"]
        job.check()
        self._ready(job, stall)
        payload = {**payload, "workflow": self._upload_inputs(job, payload)}
        prompt_id = str(uuid.uuid4())
        told = self._socket_generation()
        box = Mailbox()
        self._router.register(prompt_id, box, job.id)
        # Written down before the POST: if this process dies, the next one removes the prompt.
        self._active.add(prompt_id)
        self.orphans.add(prompt_id, url=self.base_url, job_id=job.id)
        ended = False
        try:
            # No "submitting" report: the task's start already says the job runs, and the
            # tracker reports as soon as ComfyUI starts the prompt (a cached one needs none).
            try:
                given, node_errors = self._submit(payload["workflow"], prompt_id, box, stall)
            except ExecutionFailed:
                ended = True  # refused: nothing was queued
                raise
            if given != prompt_id:  # an older ComfyUI chose its own id: book that one instead
                self._rebook(prompt_id, given, job.id)
                prompt_id = given
            try:
                result = self._run_posted(job, payload, prompt_id, node_errors, box, report_progress,
                                          stall, node_limit, None if node_errors else told)
                ended = True
                return result
            except ExecutionFailed as exc:
                ended = not node_errors  # a partial prompt refused here still runs: stop it
                self._free_next = self._free_next or isinstance(exc, OutOfMemory)
                raise
            except (JobStalled, JobTimedOut, ServiceUnavailable) as exc:
                self.orphans.add(prompt_id, reason=type(exc).__name__)
                self._rest.stop_prompt(prompt_id, timeout=1.0)
                raise
        finally:
            self._active.discard(prompt_id)
            if ended:
                self.orphans.discard(prompt_id)
            self._router.unregister(prompt_id, job.id)

    def _socket_generation(self) -> int | None:
        """The websocket's generation when this ComfyUI's messages name every output (asked
        through ``/system_stats`` once per connection), else None: the end is read from /history."""
        if not self._listener.connected.is_set():
            return None
        generation = self._listener.generation
        if self._tells is None or self._tells[0] != generation:
            try:
                self._tells = (generation, socket_tells_all(self._rest.get_json("/system_stats", 1.5)))
            except (requests.Timeout, ServiceUnavailable):
                return None
        return generation if self._tells[1] else None

    def _upload_inputs(self, job: Job, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The workflow to post, its input images uploaded (:mod:`jobqueue.connectors.comfyui.uploads`);
        a ComfyUI that stops answering meanwhile was not reached (the attempt does not count)."""
        try:
            return InputUploader(self.settings, self._rest).prepare(job, payload)
        except requests.Timeout:
            raise ServiceNotReached(f"ComfyUI at {self.base_url} did not answer an upload", {"url": self.base_url}) from None
        except ServiceNotReached:
            raise
        except ServiceUnavailable as exc:
            raise ServiceNotReached(exc.message, exc.details) from None

    def _rebook(self, asked: str, given: str, job_id: str) -> None:
        """An older ComfyUI chose its own prompt id: book that one instead of ours."""
        self._active.add(given)
        self.orphans.add(given, url=self.base_url, job_id=job_id)
        self._active.discard(asked)
        self.orphans.discard(asked)

    def _run_posted(self, job: Job, payload: Mapping[str, Any], prompt_id: str, node_errors: Mapping[str, Any],
                    box: Mailbox, report: ProgressReporter, stall: float, node_limit: float,
                    told: int | None) -> dict[str, Any]:
        """Follow a queued prompt to its result; a partially valid one (``node_errors`` in the
        200) fails at once unless the payload allows it (``partial_outputs: "warn"``); ``told``: see :meth:`_follow`."""
        warnings: list[str] = []
        if node_errors:
            if payload.get("partial_outputs") != "warn":
                self._rest.stop_prompt(prompt_id, timeout=1.0)
                raise partial_failure(node_errors)
            warnings = partial_warnings(node_errors)
        result = self._follow(job, PromptTracker(prompt_id, payload["workflow"]), box, report, stall, node_limit,
                              told)
        warnings += result.pop("warnings", [])
        if warnings:
            result["warnings"] = warnings
        return result

    def cancel(self, job: Job) -> None:
        """Flag the job and wake it: its own thread removes or interrupts the prompt."""
        job.cancelled.set()
        self._router.wake_job(job.id, "cancel")

    def _ready(self, job: Job, stall: float) -> None:
        """Make sure the websocket is open before posting; fail fast when ComfyUI is down."""
        self._listener.start()
        if self._suspect or not self._listener.connected.is_set():
            # The last job stalled or the socket is down: ask once before waiting, as long as a
            # health check (a real ComfyUI's gc.collect() can hold it for over 1.5 s).
            try:
                self._rest.get_json("/system_stats", timeout=HEALTH_TIMEOUT)
            except requests.Timeout:
                raise ServiceNotReached(f"ComfyUI at {self.base_url} does not answer", {"url": self.base_url}) from None
            except ServiceUnavailable as exc:
                raise ServiceNotReached(exc.message, exc.details) from None
            self._suspect = False
            self._listener.nudge()
        deadline = time.monotonic() + min(CONNECT_WAIT, stall)
        while not self._listener.connected.wait(0.1):
            job.check()
            if time.monotonic() >= deadline:
                raise ServiceNotReached(f"cannot open ComfyUI's websocket: {self._listener.last_error or 'no answer'}",
                                        {"url": self.base_url})
        self._free_if_asked(stall)
        # Abandoned prompts go before ours; ours then queues behind any still stopping.
        try:
            self.clean_orphans(timeout=max(0.5, min(3.0, stall / 2)), wait=ORPHAN_WAIT, job=job)
        except ServiceUnavailable as exc:
            raise ServiceNotReached(exc.message, exc.details) from None

    def _free_if_asked(self, stall: float) -> None:
        """After an out-of-memory job, with ``JOBQUEUE_COMFYUI_FREE_AFTER_OOM``: ``POST /free``
        (unload every model, free the cache) before the next job. ComfyUI already unloads its
        models after an OOM; this also drops what custom nodes keep cached."""
        if not self._free_next:
            return
        self._free_next = False
        if not self.settings.comfyui_free_after_oom:
            return
        try:
            self._rest.request("POST", "/free", json={"unload_models": True, "free_memory": True},
                               timeout=max(1.0, min(5.0, stall)))
        except (requests.Timeout, ServiceUnavailable) as exc:
            log.warning("comfyui: POST /free after an out-of-memory job failed: %s", exc)

    def _submit(self, workflow: dict[str, Any], prompt_id: str, box: Mailbox,
                stall: float) -> tuple[str, dict[str, Any]]:
        """POST the prompt: the id ComfyUI queued it under and its ``node_errors`` (outputs that
        will not run); a refusal raises :class:`ExecutionFailed`."""
        body = {"prompt": workflow, "client_id": self.client_id, "prompt_id": prompt_id}
        try:
            response = self._rest.request("POST", "/prompt", json=body, timeout=max(1.0, min(10.0, stall)))
        except requests.Timeout:
            # It may still arrive after a thaw: the orphan book has it, so it gets removed then.
            self._suspect = True
            raise ServiceNotReached(f"ComfyUI at {self.base_url} did not answer POST /prompt",
                                    {"url": self.base_url}) from None
        except ServiceUnavailable as exc:
            raise ServiceNotReached(exc.message, exc.details) from None
        if response.status_code == 400:
            try:
                error_body = response.json()
            except ValueError:
                error_body = {"error": {"type": "invalid_prompt", "message": response.text[:500]}}
            message, details = describe_validation_error(error_body)
            raise ExecutionFailed(message, details)
        if response.status_code != 200:
            raise ServiceUnavailable(f"ComfyUI answered {response.status_code} to POST /prompt: {response.text[:300]}",
                                     {"url": self.base_url, "status": response.status_code})
        answer = response.json()
        given = str(answer.get("prompt_id") or prompt_id)
        if given != prompt_id:  # an older ComfyUI that picks its own ids
            self._router.unregister(prompt_id)
            self._router.register(given, box)
        node_errors = answer.get("node_errors")
        return given, dict(node_errors) if isinstance(node_errors, dict) else {}

    def _follow(self, job: Job, tracker: PromptTracker, box: Mailbox, report: ProgressReporter,
                stall: float, node_limit: float, told: int | None) -> dict[str, Any]:
        """Follow the prompt to its end (:class:`PromptFollower`), then confirm how it ended:
        through /history, or for a success the websocket told in full (``told``, the socket's
        generation before the POST, unchanged since) through its messages."""
        follower = PromptFollower(self._rest, self._listener, job, tracker, box, report,
                                  stall=stall, node_limit=node_limit)
        try:
            entry = follower.follow()
            if entry is None and told is not None and told == self._listener.generation and not follower.dropped:
                entry = told_by_socket(job, tracker, box)
            if entry is None:  # the websocket said it ended: /history says how
                entry = await_history(self._rest, job, tracker, box, stall)
                if entry is None:  # left the queue, no history: cleared by someone, or lost
                    entry = without_history(tracker, self.base_url)
        except JobStalled:
            if follower.silent:
                self._suspect = True  # ask ComfyUI once, quickly, before the next job
            raise
        except ServiceUnavailable as exc:
            raise self._crashed(exc, tracker.prompt_id, follower.dropped) from None
        return self._finish(job, tracker, entry)

    def _crashed(self, exc: ServiceUnavailable, prompt_id: str, dropped: bool) -> ServiceUnavailable:
        """``exc`` (ComfyUI refused a connection mid-prompt) as :class:`ServerCrashed` when the
        server died: ``/system_stats`` refused too, or answering again without our prompt
        (it restarted); else ``exc`` as it is."""
        if isinstance(exc, ServerCrashed) or not exc.details.get("unreachable"):
            return exc
        socket = "closed" if dropped or not self._listener.connected.is_set() else "still open"
        details = {"url": self.base_url, "prompt_id": prompt_id}
        try:
            self._rest.get_json("/system_stats", timeout=1.5)
            state, _ = self._rest.where(prompt_id, 1.5)
        except ServiceUnavailable as probe:
            if not probe.details.get("unreachable"):
                return exc
            return ServerCrashed(f"ComfyUI at {self.base_url} exited or restarted: its websocket {socket} and "
                                 f"/system_stats is unreachable too ({probe.message})", details)
        except requests.Timeout:
            return exc
        if state == "lost":
            return ServerCrashed(f"ComfyUI at {self.base_url} exited or restarted: it came back without prompt "
                                 f"{prompt_id} in its queue or history", details)
        return exc

    def clean_orphans(self, *, timeout: float, wait: float, job: Job | None = None) -> set[str]:
        """Remove every abandoned prompt in the orphan book from ComfyUI: delete it when pending,
        interrupt it (targeted) when running, strike it out once /queue no longer lists it.

        Waits up to ``wait`` s for running ones to stop (ComfyUI honours an interrupt only at
        the next progress update or node boundary). Returns the prompts still on the server;
        raises :class:`ServiceUnavailable` when ComfyUI does not answer.
        """
        with self._orphan_lock:
            left = {p for p in self.orphans.entries() if p not in self._active}
            if not left:
                return set()
            deadline = time.monotonic() + wait
            asked: dict[str, float] = {}
            while True:
                try:
                    queue = self._rest.get_json("/queue", timeout)
                except requests.Timeout:
                    raise ServiceUnavailable(f"ComfyUI at {self.base_url} does not answer GET /queue",
                                             {"url": self.base_url}) from None
                now = time.monotonic()
                for prompt_id in sorted(left):
                    where = queue_position(queue, prompt_id)
                    if where is None:
                        log.info("comfyui: abandoned prompt %s is gone from %s", prompt_id, self.base_url)
                        self.orphans.discard(prompt_id)
                        left.discard(prompt_id)
                    elif now - asked.get(prompt_id, float("-inf")) >= ORPHAN_RESEND:
                        asked[prompt_id] = now
                        log.warning("comfyui: removing abandoned prompt %s (%s) from %s", prompt_id, where, self.base_url)
                        try:
                            self._rest.remove(prompt_id, where, timeout)
                        except requests.Timeout:
                            raise ServiceUnavailable(f"ComfyUI at {self.base_url} did not answer a stop request",
                                                     {"url": self.base_url}) from None
                if not left or time.monotonic() >= deadline or self._closing.is_set():
                    return left
                if job is not None:
                    job.sleep(0.05)
                else:
                    self._closing.wait(0.05)

    def _finish(self, job: Job, tracker: PromptTracker, entry: Mapping[str, Any]) -> dict[str, Any]:
        """The job's result from the prompt's history entry (:func:`judge` raises for any end
        but success), with every output file fetched."""
        outputs, warnings = judge(job, tracker, entry)
        files = self._fetch_files(job, outputs)
        result: dict[str, Any] = {"prompt_id": tracker.prompt_id, "outputs": outputs, "files": files}
        if warnings:
            result["warnings"] = warnings
        return result

    def _fetch_files(self, job: Job, outputs: Mapping[str, Any]) -> list[dict[str, str]]:
        """Download every output file via GET /view into the output store (``<store>/<job id>/``)."""
        files = output_files(outputs)
        for item in files:
            job.check()
            params = {"filename": item["filename"], "subfolder": item["subfolder"], "type": item["type"]}
            response = self._rest.request("GET", "/view", params=params, timeout=30.0, stream=True)
            with response:
                if response.status_code != 200:
                    raise ExecutionFailed(f"ComfyUI has no output file {item['filename']!r} of node {item['node']} "
                                          f"(GET /view answered {response.status_code})", dict(item))
                try:
                    self._store = self._store or OutputStore.from_settings(self.settings)  # one per connector
                    item.update(save_output(self.settings, job.id, item["filename"], response.iter_content(1 << 16),
                                            alternative=item["node"], store=self._store))
                except Exception as exc:  # any store error (OSError, botocore's own) fails the job clearly
                    raise ExecutionFailed(f"could not store output file {item['filename']!r}: {exc}", dict(item)) from exc
        return files
