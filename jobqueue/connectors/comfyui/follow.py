"""Following one posted prompt on ComfyUI to its end, judging liveness by answers, never by
silence alone.

:class:`PromptFollower` is the job thread's loop between the POST and the end: each turn it
honours a cancel (or the job's timeout), takes the websocket's messages for the prompt,
reports progress, polls ``/queue`` and ``/history`` when the socket has been quiet, and raises
:class:`JobStalled` when ComfyUI stops answering or a node runs too long without a message.
It ends by saying how the prompt ended; :mod:`jobqueue.connectors.comfyui.connector` confirms
that through ``/history`` and fetches the outputs.

A server that died is told from one that stalls: when the socket closed during the prompt and
ComfyUI then answers without our prompt in its queue or history, it restarted
(:class:`ServerCrashed`, "ComfyUI exited or restarted"); connections refused mid-prompt are
judged by the connector the same way (:meth:`ComfyUIConnector._crashed`), at once, never after
the stall timeout.

A silenced socket is reopened: ComfyUI keeps one socket per client id and drops the
registration whenever *any* handler of that id ends, so an old connection that closes late
leaves the new one open but deaf. When a poll finds our prompt running and the socket has
carried nothing at all for ``SILENT_REOPEN`` s (at most half the node limit), the socket is
reopened; ComfyUI then repeats the running node to its client, and progress resumes (a node
that is merely silent costs a reopen now and then, each wait twice the last).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from jobqueue.connectors.base import Job, ProgressReporter
from jobqueue.connectors.comfyui.protocol import PromptTracker
from jobqueue.connectors.comfyui.rest import ComfyUIRest
from jobqueue.connectors.comfyui.ws import Mailbox, Wake, WebSocketListener
from jobqueue.errors import JobCancelled, JobStalled, ServerCrashed, ServiceUnavailable

#: Seconds of websocket silence after which /queue and /history are polled.
QUIET_POLL = 2.0
#: How long (s) a cancelled job waits for ComfyUI to confirm the interrupt.
CANCEL_GRACE = 5.0
#: Seconds without any websocket message, while /queue shows our prompt running, after which
#: the socket is reopened (capped at half the node limit).
SILENT_REOPEN = 10.0


class PromptFollower:
    """Follows one prompt from its POST to its end (one instance per prompt, on the job's thread).

    ``last_answer``: the last websocket message of any kind or answer to GET /queue.
    ``last_ours``: the last message about our prompt (or when it started running).
    """

    def __init__(self, rest: ComfyUIRest, listener: WebSocketListener, job: Job, tracker: PromptTracker,
                 box: Mailbox, report: ProgressReporter, *, stall: float, node_limit: float) -> None:
        self.rest, self.listener, self.base_url = rest, listener, rest.base_url
        self.job, self.tracker, self.box, self.report = job, tracker, box, report
        self.stall, self.node_limit = stall, node_limit
        self.last_answer = self.last_ours = time.monotonic()
        self.last_poll = float("-inf")
        self.poll_every = max(0.25, min(QUIET_POLL, stall / 2))
        self.probe_failed = False
        #: Where the last poll found the prompt: "pending", "running" or None (not polled yet).
        self.where: str | None = None
        self.cancel_sent_at: float | None = None
        self.reported: Any = None
        # With the socket open, the end of even a cached run arrives as a message: no poll.
        # Without it (or once it drops), ask /queue and /history right away.
        self.poll_now = not listener.connected.is_set()
        #: True once ComfyUI stopped answering (the connector then asks before its next job).
        self.silent = False
        #: True once the socket closed while the prompt was followed (a restart loses the prompt).
        self.dropped = False
        self.reopen_after = max(0.5, min(SILENT_REOPEN, node_limit / 2))
        self.reopened_at = float("-inf")

    def follow(self) -> Mapping[str, Any] | None:
        """Follow the prompt to its end: its ``/history`` entry when a poll found it there,
        None when the websocket said it ended (the caller confirms through ``/history``)."""
        while True:
            self._honour_cancel_or_timeout()
            self._take_messages()
            now = time.monotonic()
            self.last_answer = max(self.last_answer, self.listener.last_message_at)
            self._report_progress()
            if self.tracker.finished and self.cancel_sent_at is None:
                return None
            if self.poll_now or self.probe_failed or now - max(self.last_ours, self.last_poll) >= self.poll_every:
                entry = self._poll(now)
                if entry is not None:
                    return entry
            self._check_liveness()

    # -- one turn, top-down --------------------------------------------------------------------
    def _honour_cancel_or_timeout(self) -> None:
        """A cancelled job stops the prompt once and waits up to ``CANCEL_GRACE`` s for it to end;
        any other job checks its own timeout."""
        if not self.job.cancelled.is_set():
            self.job.check()
            return
        prompt_id = self.tracker.prompt_id
        if self.cancel_sent_at is None:
            self.cancel_sent_at = time.monotonic()
            if self.rest.stop_prompt(prompt_id, timeout=3.0) != "running":
                raise JobCancelled("job was cancelled", {"prompt_id": prompt_id})
        if self.tracker.finished or time.monotonic() - self.cancel_sent_at > CANCEL_GRACE:
            raise JobCancelled("job was cancelled; ComfyUI interrupted it", {"prompt_id": prompt_id})

    def _take_messages(self) -> None:
        """Feed the mailbox's messages to the tracker; a dropped socket asks for a poll now."""
        for item in self.box.take(0 if self.poll_now else 0.25):
            if isinstance(item, Wake):
                dropped = item.reason.startswith("disconnected")
                self.poll_now, self.dropped = self.poll_now or dropped, self.dropped or dropped
            elif isinstance(item, bytes):
                if self.tracker.feed_binary(item):
                    self.last_ours = time.monotonic()
                    if self.tracker.preview is not None:
                        self.job.report_preview(self.tracker.preview, self.tracker.preview_type or "image/png")
            elif self.tracker.feed(item):
                self.last_ours = time.monotonic()

    def _report_progress(self) -> None:
        """Report the tracker's progress when it changed."""
        progress = self.tracker.progress()
        # Once the prompt has ended, the job's own end follows: a last "all nodes done"
        # report would only cost a backend write and an event.
        if progress != self.reported and not self.tracker.finished:
            self.reported = progress
            # 100 only once the result is in hand (the task reports completion itself).
            self.report(percent=min(progress.percent, 99.9), step=progress.step, total_steps=progress.total_steps,
                        node=progress.node, message=progress.message)

    def _poll(self, now: float) -> Mapping[str, Any] | None:
        """Ask /queue and /history where the prompt is: its history entry once it ended; raises
        when it was lost (or, for a cancelled job, ended)."""
        prompt_id = self.tracker.prompt_id
        self.poll_now, self.last_poll = False, now
        state, info = self.rest.where(prompt_id, max(0.5, min(3.0, self.stall / 2)))
        self.probe_failed = state == "unknown"
        if state == "history":
            if self.cancel_sent_at is not None:
                raise JobCancelled("job was cancelled", {"prompt_id": prompt_id})
            entry: Mapping[str, Any] = info
            return entry
        if state == "lost" and self.dropped:
            raise ServerCrashed(
                f"ComfyUI at {self.base_url} exited or restarted: its websocket closed and it came back without "
                f"prompt {prompt_id} in its queue or history", {"url": self.base_url, "prompt_id": prompt_id})
        if state == "lost":
            raise ServiceUnavailable(
                f"prompt {prompt_id} left ComfyUI's queue without a result (ComfyUI restarted?)",
                {"url": self.base_url, "prompt_id": prompt_id})
        if state in ("running", "pending"):
            self.last_answer = time.monotonic()
            if state == "running" and self.where != "running":
                self.last_ours = self.last_answer  # the node limit counts from the start of running
            self.where = state
            if state == "running":
                self._reopen_if_deaf()
        return None

    def _reopen_if_deaf(self) -> None:
        """Reopen a socket that carried nothing for ``reopen_after`` s while our prompt runs
        (see the module doc: ComfyUI may have dropped its registration). A node may also just
        be silent (a model load): each reopen doubles the wait before the next, up to half the
        node limit."""
        now = time.monotonic()
        quiet = now - max(self.listener.last_message_at, self.reopened_at)
        if self.listener.connected.is_set() and quiet > self.reopen_after:
            self.reopened_at = now
            self.listener.reopen(f"no message for {quiet:.1f} s while prompt {self.tracker.prompt_id} runs")
            self.reopen_after = min(self.reopen_after * 2, max(self.reopen_after, self.node_limit / 2))

    def _check_liveness(self) -> None:
        """Raise :class:`JobStalled` when ComfyUI stopped answering, or when the running prompt
        has sent nothing for longer than the node limit."""
        now, prompt_id, node = time.monotonic(), self.tracker.prompt_id, self.tracker.running
        if self.probe_failed and now - self.last_answer > self.stall:
            self.silent = True
            raise JobStalled(
                f"ComfyUI at {self.base_url} stopped answering: no websocket message and no answer to "
                f"GET /queue for {self.stall:g} s (websocket "
                f"{'connected' if self.listener.connected.is_set() else 'disconnected'})",
                {"url": self.base_url, "prompt_id": prompt_id, "stall_timeout": self.stall, "node": node})
        if self.where == "running" and now - self.last_ours > self.node_limit:
            raise JobStalled(
                f"prompt {prompt_id} has been running on ComfyUI with no message at all for {self.node_limit:g} s "
                f"(node limit; node {node or '?'})",
                {"url": self.base_url, "prompt_id": prompt_id, "node_timeout": self.node_limit, "node": node})
