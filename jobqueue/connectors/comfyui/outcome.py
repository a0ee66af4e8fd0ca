"""How a prompt ended, read from ComfyUI's answers the way a real v0.3.64 gives them.

* :func:`await_history`: the websocket said the prompt ended; its ``/history`` entry follows,
  but not at once. ComfyUI sends ``execution_success`` from the executor, may then unload
  every model (``--disable-smart-memory``, large models: seconds) and only then writes the
  history and sends ``executing`` with ``node: null``. So the wait has no fixed bound while
  ``/queue`` still lists the prompt as running; the bound (``CONFIRM_WAIT``) starts once the
  prompt left the queue or ``executing: null`` arrived.
* :func:`told_by_socket`: a prompt that succeeded can skip that read when the websocket told
  everything the history holds (see the function).
* :func:`judge`: the job's result or error from the history entry: out of memory (an
  ``execution_error`` of type ``torch.OutOfMemoryError`` or, older torch,
  ``torch.cuda.OutOfMemoryError``, whose message -- "Allocation on device ..." or "CUDA out of
  memory ..." -- ComfyUI ends with its tip "This error means you ran out of memory on your
  GPU") is :class:`OutOfMemory`, which moves the job to a larger card; an interrupt jobqueue did
  not ask for (someone's Cancel in ComfyUI's UI) hands the job back once; a loader's
  ``FileNotFoundError`` (a V3 loader accepts a missing file at POST /prompt) names the
  vanished model so the worker hands the job back (:mod:`jobqueue.worker.handback`); outputs
  blocked by an ``ExecutionBlocker`` become warnings.
* :func:`partial_failure` / :func:`partial_warnings`: a 200 to POST /prompt with non-empty
  ``node_errors`` (ComfyUI runs only the valid outputs).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

import requests

from jobqueue.connectors.base import Job
from jobqueue.connectors.comfyui.models import LOADER_NODES
from jobqueue.connectors.comfyui.protocol import (
    INTERRUPTED,
    SUCCESS,
    PromptTracker,
    describe_execution_error,
    describe_validation_error,
    outcome_from_history,
    queue_position,
)
from jobqueue.connectors.comfyui.rest import ComfyUIRest
from jobqueue.connectors.comfyui.ws import Mailbox, Wake
from jobqueue.errors import ExecutionFailed, JobCancelled, JobStalled, OutOfMemory, ServiceUnavailable

#: How long (s) a prompt that left the queue (or said ``executing: null``) may take to appear in /history.
CONFIRM_WAIT = 5.0
#: Seconds between two /queue checks while the history is awaited.
QUEUE_CHECK = 0.5
#: Longest wait (s) for ``executing`` with ``node: null`` once ``execution_success`` arrived, before
#: the history is read instead (ComfyUI may unload every model in between).
SOCKET_END_WAIT = 0.25
#: The first ComfyUI whose websocket announces the outputs of cached nodes too (``executed``)
#: and which reports its version in ``/system_stats``.
SOCKET_TELLS_SINCE = (0, 3, 0)
#: ``exception_type`` of an out-of-memory error (``execution.full_type_name`` of torch's class).
OOM_TYPES = frozenset({"torch.OutOfMemoryError", "torch.cuda.OutOfMemoryError"})
#: The tip ComfyUI's ``execution.py`` appends to an out-of-memory message.
OOM_TIP = "This error means you ran out of memory on your GPU"
#: ``folder_paths.get_full_path_or_raise``'s message: the folder and the missing file.
_MISSING_FILE = re.compile(r"Model in folder '([^']*)' with filename '([^']*)' not found")


def await_history(rest: ComfyUIRest, job: Job, tracker: PromptTracker, box: Mailbox,
                  stall: float) -> Mapping[str, Any] | None:
    """The prompt's /history entry once written, or None when it never came (``CONFIRM_WAIT``
    after the prompt left the queue). Raises :class:`JobStalled` when ComfyUI answers nothing
    for ``stall`` s."""
    delay, left_at, checked = 0.005, None, float("-inf")
    answered = time.monotonic()
    while True:
        try:
            entry = rest.history(tracker.prompt_id, 3.0)
            answered = time.monotonic()
        except requests.Timeout:
            entry = None
        if entry is not None:
            return entry
        for item in box.take(0):
            if isinstance(item, dict):
                tracker.feed(item)
        now = time.monotonic()
        if left_at is None and (tracker.ended or now - checked >= QUEUE_CHECK):
            checked = now
            left_at = now if tracker.ended or _left_queue(rest, tracker.prompt_id) else None
        if left_at is not None and now - left_at >= CONFIRM_WAIT:
            return None
        if now - answered > stall:
            raise JobStalled(f"ComfyUI at {rest.base_url} stopped answering while prompt {tracker.prompt_id} "
                             f"was ending (no answer to GET /history for {stall:g} s)",
                             {"url": rest.base_url, "prompt_id": tracker.prompt_id, "stall_timeout": stall})
        job.sleep(delay)
        delay = min(delay * 2, 0.2)


def socket_tells_all(stats: Any) -> bool:
    """Whether a ComfyUI (its ``/system_stats`` answer) announces every output on the websocket.

    Since the execution model of August 2024, ComfyUI's ``execute()`` sends ``executed`` for a
    cached node too (with its cached UI), and the prompt's history ``outputs`` are the UI of the
    same nodes (``execution.py``: ``history_result``). Before it, a cached node sent nothing, and
    only ``/history`` named its files. ``comfyui_version`` appeared in ``/system_stats`` later
    still (0.3), so a server that reports 0.3 or newer has the messages; one that reports no
    version, or an older one, is read through ``/history``."""
    system = stats.get("system") if isinstance(stats, Mapping) else None
    version = str((system or {}).get("comfyui_version") or "") if isinstance(system, Mapping) else ""
    parts = re.findall(r"\d+", version)[:3]
    return len(parts) == 3 and tuple(int(x) for x in parts) >= SOCKET_TELLS_SINCE


def told_by_socket(job: Job, tracker: PromptTracker, box: Mailbox) -> Mapping[str, Any] | None:
    """The history entry the websocket already told, for a prompt that succeeded, or None
    (then ``/history`` is read as before). The caller vouches that the socket did not drop or
    reconnect since before the POST and that the server announces every output
    (:func:`socket_tells_all`).

    ComfyUI sends a client its messages in order on one connection, and a connection that
    loses its registration hears nothing more until the next one; so a prompt whose
    ``execution_start``, ``execution_success`` and ``executing`` with ``node: null`` all arrived on
    the same connection was told every ``executed`` in between. ``node: null`` comes after the
    prompt worker wrote the history (``main.py``: ``task_done``, then the message), whose
    ``outputs`` are those announced. Waits up to ``SOCKET_END_WAIT`` s for ``node: null`` after
    ``execution_success`` (a server may unload models in between): never longer, never hangs."""
    if not tracker.opened or tracker.outcome != SUCCESS:
        return None
    deadline = time.monotonic() + SOCKET_END_WAIT
    while not tracker.ended:
        job.check()
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        for item in box.take(min(left, 0.05)):
            if isinstance(item, Wake):
                return None  # a connection change (or a cancel): read the history
            if isinstance(item, dict):
                tracker.feed(item)
    return {"status": {"status_str": "success", "completed": True, "messages": []},
            "outputs": dict(tracker.outputs)}


def _left_queue(rest: ComfyUIRest, prompt_id: str) -> bool:
    """Whether /queue no longer lists the prompt (False when ComfyUI does not answer in time)."""
    try:
        return queue_position(rest.get_json("/queue", 3.0), prompt_id) is None
    except requests.Timeout:
        return False


def without_history(tracker: PromptTracker, url: str) -> Mapping[str, Any]:
    """What to judge when the prompt left the queue but /history has no entry: someone cleared
    the history (the websocket told how it ended: its messages stand in), or ComfyUI lost the
    prompt (a restart: :class:`ServiceUnavailable`)."""
    if tracker.outcome == SUCCESS and tracker.outputs:
        return {"status": {"status_str": "success", "completed": True, "messages": []},
                "outputs": dict(tracker.outputs), "history_lost": True}
    if tracker.outcome is not None and tracker.outcome != SUCCESS and tracker.error is not None:
        kind = "execution_error" if tracker.outcome != INTERRUPTED else "execution_interrupted"
        return {"status": {"status_str": "error", "messages": [[kind, tracker.error]]}, "history_lost": True}
    raise ServiceUnavailable(f"prompt {tracker.prompt_id} ended but ComfyUI's /history has no entry",
                             {"url": url, "prompt_id": tracker.prompt_id})


def judge(job: Job, tracker: PromptTracker, entry: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The outputs and warnings of a prompt that succeeded; raises for any other end."""
    kind, data = outcome_from_history(entry)
    if kind == INTERRUPTED:
        _interrupted(job, tracker.prompt_id, data)
    if kind != SUCCESS:
        message, details = describe_execution_error(data)
        if out_of_memory(data):
            raise OutOfMemory(f"out of GPU memory: {message}", details)
        missing = missing_model(data)
        if missing is not None:
            details["missing_models"] = [missing]
            message = f"{message} (model {missing!r} is gone from this ComfyUI)"
        raise ExecutionFailed(message, details)
    warnings = [f"node {b.get('node_id')} ({b.get('node_type')}) did not run: "
                f"{str(b.get('exception_message') or 'Execution Blocked').strip()}" for b in tracker.blocked]
    if entry.get("history_lost"):
        warnings.append("ComfyUI's history entry was gone (cleared?) when read: the outputs are the ones "
                        "its websocket announced")
    return dict(entry.get("outputs") or {}), warnings


def _interrupted(job: Job, prompt_id: str, data: Mapping[str, Any]) -> None:
    """Raise for an interrupted prompt: cancelled when jobqueue asked; otherwise someone else
    interrupted it (a global Cancel in ComfyUI's UI stops whatever runs), which hands the job
    back once (a retryable error) and fails it the next time."""
    where = f"node {data.get('node_id')} ({data.get('node_type')})"
    details = {"prompt_id": prompt_id, "node_id": data.get("node_id"), "node_type": data.get("node_type"),
               "interrupted_by": "not jobqueue"}
    if job.cancelled.is_set():
        raise JobCancelled("job was cancelled; ComfyUI interrupted it", {"prompt_id": prompt_id})
    if job.attempt == 0:
        raise ServiceUnavailable(f"ComfyUI interrupted the prompt at {where} although jobqueue did not ask "
                                 "(someone's Cancel in ComfyUI's UI?): handing the job back once", details)
    raise ExecutionFailed(f"ComfyUI interrupted the prompt at {where} although jobqueue did not ask, again "
                          f"(attempt {job.attempt + 1}): not handing it back another time", details)


def out_of_memory(data: Mapping[str, Any]) -> bool:
    """Whether an ``execution_error`` is ComfyUI's out of memory: torch's type, or ComfyUI's tip
    after torch's message ("Allocation on device" with cudaMallocAsync, else "CUDA out of memory")."""
    kind, text = str(data.get("exception_type") or ""), str(data.get("exception_message") or "")
    return kind in OOM_TYPES or (OOM_TIP in text and ("Allocation on device" in text or "out of memory" in text))


def missing_model(data: Mapping[str, Any]) -> str | None:
    """The model file a known loader failed to find at run time (ComfyUI checks a V3 loader's
    combo only when it runs: ``FileNotFoundError``), or None."""
    if data.get("node_type") not in LOADER_NODES or not str(data.get("exception_type") or "").endswith(
            "FileNotFoundError"):
        return None
    found = _MISSING_FILE.search(str(data.get("exception_message") or ""))
    return found.group(2) if found else None


def partial_failure(node_errors: Mapping[str, Any]) -> ExecutionFailed:
    """The error for a prompt ComfyUI accepted with some outputs invalid (it runs the others)."""
    message, details = describe_validation_error({"error": {
        "type": "prompt_outputs_failed_validation",
        "message": "Some outputs failed validation (ComfyUI would run only the others; "
                   "partial_outputs='warn' runs them)"}, "node_errors": node_errors})
    return ExecutionFailed(message, details)


def partial_warnings(node_errors: Mapping[str, Any]) -> list[str]:
    """One warning per output node that will not run, with the failing node's first error."""
    warnings: dict[str, str] = {}
    for node_id, info in node_errors.items():
        if not isinstance(info, Mapping):
            continue
        errors = [e for e in info.get("errors") or () if isinstance(e, Mapping)]
        why = f"{errors[0].get('type')}: {errors[0].get('message')}" if errors else "invalid"
        for out in info.get("dependent_outputs") or ():
            warnings.setdefault(str(out), f"output node {out} did not run: node {node_id} "
                                          f"({info.get('class_type')}) {why}")
    return [warnings[k] for k in sorted(warnings)]
