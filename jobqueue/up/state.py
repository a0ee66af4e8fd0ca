"""The run file of ``jobqueue up``: how a second shell finds the broker ``up`` serves.

Once everything runs, ``jobqueue up`` writes ``<data dir>/up.json``: its pid and the effective
broker, result backend, monitor and simulator URLs. :meth:`jobqueue.config.Settings.from_env`
reads it when ``JOBQUEUE_BROKER_URL`` is not set in the environment, so ``jobqueue submit``
and ``submit_job()`` in another shell started in the same folder (or with the same
``JOBQUEUE_DATA_DIR``) reach the broker ``up`` started, embedded or not, with nothing to
export. ``up`` removes the file when it stops; a file left by an ``up`` that was killed is
ignored (its pid no longer runs ``jobqueue``) and replaced by the next ``up``.

No module-level state; nothing here imports the rest of jobqueue.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

#: Name of the run file inside the data directory.
RUN_FILE = "up.json"


def run_file(data_dir: str | os.PathLike[str]) -> Path:
    """Where ``up`` with data directory ``data_dir`` writes its run file."""
    return Path(data_dir) / RUN_FILE


def write_run_file(data_dir: str | os.PathLike[str], info: dict[str, Any]) -> Path:
    """Write ``info`` (plus our pid) as the run file, atomically; return its path."""
    path = run_file(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{RUN_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**info, "pid": os.getpid()}, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def remove_run_file(data_dir: str | os.PathLike[str]) -> None:
    """Remove the run file if it is ours (another ``up``'s stays)."""
    path = run_file(data_dir)
    info = _read(path)
    if info is not None and info.get("pid") == os.getpid():
        path.unlink(missing_ok=True)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None


def _runs_jobqueue(pid: int) -> bool:
    """True when process ``pid`` exists (and, where /proc tells, runs jobqueue)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    try:
        return b"jobqueue" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid


def read_live_run_file(data_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run file of a ``jobqueue up`` that is still running, else None."""
    info = _read(run_file(data_dir))
    if info is None or not _runs_jobqueue(info["pid"]):
        return None
    return info


def discovered_broker(data_dir: str | os.PathLike[str]) -> dict[str, str]:
    """``{"broker_url": ..., "result_backend": ..., "monitor_url": ..., "monitor_token": ...}`` of
    the ``up`` running with ``data_dir`` (the monitor's URL without its login fragment, and the
    token that fragment carries, so a second shell's ``jobqueue jobs`` is let in as the login link
    would be), or ``{}`` when none runs."""
    info = read_live_run_file(data_dir)
    if info is None or not isinstance(info.get("broker_url"), str):
        return {}
    found = {"broker_url": info["broker_url"]}
    if isinstance(info.get("result_backend"), str):
        found["result_backend"] = info["result_backend"]
    if isinstance(info.get("monitor_url"), str):
        url, _, fragment = info["monitor_url"].partition("#")
        found["monitor_url"] = url.rstrip("/")
        token = dict(parse_qsl(fragment)).get("token")
        if token:
            found["monitor_token"] = token
    return found
