"""Following one request on the WebUI while its blocking POST waits: progress, previews,
liveness, cancel and timeout, decided anew at every poll for whose job the WebUI runs.

Every ``POLL_INTERVAL`` s the :class:`Follower` reads ``/sdapi/v1/progress`` (with task ids,
between two ``/internal/progress`` answers about our task; without, by the order of jobs:
:mod:`jobqueue.connectors.a1111.ownership`). Only a state that is ours becomes progress, a
preview, or the ``interrupted`` flag of our job; a state that is not (another client's job, the
next job already running while our answer is being encoded, one of our abandoned requests)
only proves the WebUI alive. While ours is not running, our abandoned requests are swept
(interrupted when they begin: :mod:`jobqueue.connectors.a1111.abandoned`).

A 500 from ``/sdapi/v1/progress`` (the WebUI cannot encode the preview in its
``samples_format``, e.g. avif) is an answer, not silence: the follower asks without the
preview from then on and says once that previews are unavailable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from jobqueue.connectors.a1111.answers import decode_image, describe_error, image_type
from jobqueue.connectors.a1111.client import WebUIClient
from jobqueue.connectors.a1111.ownership import JobOrder
from jobqueue.connectors.a1111.post import BlockingPost
from jobqueue.connectors.base import Job, ProgressReporter
from jobqueue.errors import JobCancelled, JobStalled, JobTimedOut, ServiceUnavailable

#: Seconds between two progress polls while a job runs.
POLL_INTERVAL = 0.5
#: How long (s) a cancelled job waits for the WebUI to stop and answer.
CANCEL_GRACE = 5.0


class Run:
    """What the job's thread knows about its request on the WebUI."""

    def __init__(self, job: Job, task_id: str, switching: str | None) -> None:
        self.job = job
        self.task_id = task_id
        #: The checkpoint ``override_settings`` asks for (None: no switch requested).
        self.switching = switching
        #: Whether the state of the last poll was our job's; ``began``: ours was seen once.
        self.ours = False
        self.began = False
        #: ``/internal/progress`` said our task ended (its answer is on its way).
        self.completed = False
        #: Without task ids: our place among the jobs the WebUI begins.
        self.order: JobOrder | None = None
        self.interrupted_seen = False
        self.wake = threading.Event()
        #: Liveness: the last answer of ``/sdapi/v1/progress`` and the last change of its state.
        self.last_answer = self.last_change = time.monotonic()
        self.snapshot: Any = None
        self.cancelled_at: float | None = None
        self.cancel_sent_at: float | None = None
        self.preview: str | None = None
        self.waiting_told = False
        #: ``/sdapi/v1/progress`` failed with the preview: ask without it.
        self.skip_images = False


class Follower:
    """Polls the WebUI for one :class:`Run` until the answer to its POST arrives."""

    def __init__(self, client: WebUIClient, run: Run, post: BlockingPost, report: ProgressReporter, *,
                 stall: float, node_limit: float, sweep: Callable[[float], None],
                 orphan_began: Callable[[], None]) -> None:
        self.client = client
        self.run = run
        self.post = post
        self.report = report
        self.stall = stall
        self.node_limit = node_limit
        self._sweep = sweep
        self._orphan_began = orphan_began
        #: Set when the WebUI stopped answering or moving (ask it once before the next job).
        self.suspect = False

    def follow(self) -> None:
        """Return once the POST is answered; raise on a cancel, the timeout or a stall."""
        run = self.run
        run.last_answer = run.last_change = time.monotonic()
        while not self.post.done.is_set():
            self._honour_cancel_or_timeout()
            state = self._poll_unless_gone()
            now = time.monotonic()
            if state is not None:
                self._take_state(state, now)
            if self.post.done.is_set():
                return
            self._check_stall(now)
            self._pause()

    # -- cancel, timeout, stall ------------------------------------------------------------
    def _honour_cancel_or_timeout(self) -> None:
        """A cancelled job interrupts our job when the WebUI runs it and gives up after
        ``CANCEL_GRACE`` s; a job out of time interrupts it and raises :class:`JobTimedOut`."""
        run = self.run
        if not run.job.cancelled.is_set():
            try:
                run.job.check()
            except JobTimedOut:
                self.interrupt()
                raise
            return
        run.cancelled_at = run.cancelled_at or time.monotonic()
        if run.cancel_sent_at is None and run.ours:
            self.interrupt()
            run.cancel_sent_at = time.monotonic()
        if time.monotonic() - (run.cancel_sent_at or run.cancelled_at) > CANCEL_GRACE:
            raise JobCancelled("job was cancelled" + ("; the WebUI did not stop in time" if run.cancel_sent_at
                                                      else " before the WebUI started it"),
                               {"task_id": run.task_id})

    def _check_stall(self, now: float) -> None:
        """Raise :class:`JobStalled` (or, for a cancelled job, :class:`JobCancelled`) when the
        WebUI has not answered for ``stall`` s or not moved for ``node_limit`` s."""
        run = self.run
        if now - run.last_answer <= self.stall and now - run.last_change <= self.node_limit:
            return
        self.suspect = True
        if run.job.cancelled.is_set():
            raise JobCancelled("job was cancelled; the WebUI stopped answering", {"task_id": run.task_id})
        silent = now - run.last_answer > self.stall
        what = "did not answer /sdapi/v1/progress" if silent else "showed no progress"
        if not silent:  # a WebUI that answers may still free itself; a silent one would not hear
            self.interrupt(timeout=1.0)
        limit = self.stall if silent else self.node_limit
        raise JobStalled(f"the WebUI at {self.client.base_url} {what} for {limit:g} s",
                         {"url": self.client.base_url, "task_id": run.task_id, "stall_timeout": self.stall,
                          "node_timeout": self.node_limit})

    def _pause(self) -> None:
        """Wait until the next poll, the WebUI's answer, or a cancel, whichever comes first."""
        until = time.monotonic() + POLL_INTERVAL
        while time.monotonic() < until and not self.post.done.is_set() and not self.run.wake.is_set():
            self.post.done.wait(0.05)
        self.run.wake.clear()

    def interrupt(self, timeout: float = 3.0) -> None:
        """Interrupt our job, and only ours: never while the WebUI runs another job."""
        if self.run.ours:
            self.client.interrupt(timeout)

    # -- polls -----------------------------------------------------------------------------
    def _poll_unless_gone(self) -> dict[str, Any] | None:
        """:meth:`_poll`; a WebUI gone away cancels a cancelled job (never retried) and fails the others."""
        try:
            return self._poll()
        except ServiceUnavailable:
            if self.run.job.cancelled.is_set():
                raise JobCancelled("job was cancelled; the WebUI went away", {"task_id": self.run.task_id}) from None
            raise

    def _poll(self) -> dict[str, Any] | None:
        """One poll: the progress state (None when the WebUI gave none in time), with
        ``run.ours`` set by task ids or by job order."""
        timeout = max(0.5, min(3.0, self.stall / 2))
        try:
            if self.run.order is None and self.client.task_ids:
                return self._poll_by_task(timeout)
            return self._poll_by_order(timeout)
        except (requests.Timeout, ValueError):
            return None

    def _poll_by_task(self, timeout: float) -> dict[str, Any] | None:
        run = self.run
        before = self.client.task(run.task_id, timeout)
        if before is None:  # no /internal/* routes (--nowebui): by job order from now on
            run.order = JobOrder(None, 0)
            return self._poll_by_order(timeout)
        state = self._progress(timeout)
        run.ours = False
        if before.get("active"):
            after = self.client.task(run.task_id, timeout)
            run.ours = bool(after and after.get("active"))
        else:
            run.completed = run.completed or bool(before.get("completed"))
            if not run.completed:
                self._sweep(timeout)
        return state

    def _poll_by_order(self, timeout: float) -> dict[str, Any] | None:
        run = self.run
        if run.order is None:
            run.order = JobOrder(None, 0)
        state = self._progress(timeout)
        if state is None:
            return None
        verdict = run.order.observe(state["state"])
        if verdict.orphan_began:
            self.client.interrupt(timeout)
            self._orphan_began()
        run.ours = verdict.ours and not run.completed
        return state

    def _progress(self, timeout: float) -> dict[str, Any] | None:
        """``GET /sdapi/v1/progress``; any answer proves the WebUI alive, a 500 with the
        preview is asked again without it (and previews are skipped from then on)."""
        run = self.run
        response = self._get_progress(run.skip_images, timeout)
        if response.status_code == 500 and not run.skip_images:
            run.skip_images = True
            try:
                why = describe_error(500, response.json())
            except ValueError:
                why = f"the WebUI answered 500: {response.text[:200]}"
            self.report(message=f"live previews unavailable ({why}); progress goes on without them")
            response = self._get_progress(True, timeout)
        if response.status_code != 200:
            return None
        state: dict[str, Any] = response.json()
        return state if isinstance(state.get("state"), dict) else None

    def _get_progress(self, skip_images: bool, timeout: float) -> requests.Response:
        response = self.client.request(
            "GET", f"/sdapi/v1/progress?skip_current_image={'true' if skip_images else 'false'}", timeout=timeout)
        self.run.last_answer = time.monotonic()
        return response

    # -- states ----------------------------------------------------------------------------
    def _take_state(self, state: dict[str, Any], now: float) -> None:
        """Note whether the WebUI moved; report our job's progress and preview, or once that
        the WebUI is busy with another job."""
        run = self.run
        shown = state["state"]
        count = shown.get("job_count", 0)
        current = (round(float(state.get("progress") or 0), 6), shown.get("job"), count, shown.get("job_no"),
                   shown.get("sampling_step"), shown.get("sampling_steps"), state.get("textinfo"), run.ours)
        if current != run.snapshot:
            run.snapshot, run.last_change = current, now
        elif not run.ours and count != 0:
            run.last_change = now  # busy with another job: alive, we wait our turn (or our answer)
        elif run.ours and count == -1:
            run.last_change = now  # our checkpoint (re)load: loading weights shows no progress
        if not run.ours:
            if not run.waiting_told and not run.began and count != 0:
                self.report(message="waiting: the WebUI is busy with another client's job")
                run.waiting_told = True
            return
        run.began = True
        if count != 0 and shown.get("interrupted") and run.cancel_sent_at is None:
            run.interrupted_seen = True
        self._report(state)
        image = state.get("current_image")
        if image and image != run.preview:
            run.preview = image
            data = decode_image(image)
            run.job.report_preview(data, image_type(data))

    def _report(self, progress: dict[str, Any]) -> None:
        run = self.run
        shown = progress["state"]
        count, number = int(shown.get("job_count") or 0), int(shown.get("job_no") or 0)
        step, steps = int(shown.get("sampling_step") or 0), int(shown.get("sampling_steps") or 0)
        if count <= 0:
            self.report(message=f"loading checkpoint {run.switching}" if run.switching
                        else "starting (the WebUI loads its checkpoint first if another is in memory)")
            return
        eta = progress.get("eta_relative")
        text = f"{shown.get('job') or 'generating'}: step {step}/{steps}"
        if isinstance(eta, (int, float)) and eta > 0:
            text += f" (WebUI eta {eta:.1f} s)"
        if steps > 0:
            # Steps done over steps to do: the WebUI's own "progress" starts at 0.01 before any step.
            done, total = min(number, count) * steps + step, count * steps
            self.report(percent=min(100.0 * done / total, 99.9), step=done, total_steps=total, message=text)
        else:
            self.report(percent=max(0.0, min(float(progress.get("progress") or 0) * 100, 99.9)), message=text)
