"""What the everyday commands of the ``jobqueue`` CLI do, without click (``jobqueue/cli.py``
parses, calls these and turns their errors into messages and exit codes).

* payloads: inline JSON, ``@file`` or ``-`` (stdin); a ComfyUI "Save (API)" file as a job;
* ``jobs`` and ``workers`` from the monitor's REST API (``JOBQUEUE_MONITOR_URL``, else the
  monitor at ``JOBQUEUE_MONITOR_HOST:PORT``); ``workers`` without ``JOBQUEUE_MONITOR_URL`` asks
  the workers themselves over the broker (the ``connector_status`` command: online ones only);
* ``outputs``: a job's files, copied from the output store (:mod:`jobqueue.shared.outputs`).
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any

from jobqueue.config import Settings
from jobqueue.shared.names import CONTROL_CONNECTOR_STATUS
from jobqueue.shared.outputs import OutputStore, is_safe_name

#: Seconds a command waits for the monitor, or for the workers' answers.
ASK_TIMEOUT = 5.0


class CommandError(Exception):
    """A command cannot do what was asked; the message says why (the CLI exits 1)."""


class PayloadError(ValueError):
    """A payload argument that is not a JSON object (the CLI reports a usage error, exit 2)."""


def read_payload(text: str, stdin: IO[str] | None = None) -> dict[str, Any]:
    """A payload argument as a dict: ``-`` reads stdin, ``@path`` a file, anything else is JSON."""
    where = "the payload"
    if text == "-":
        where, text = "stdin", (stdin or sys.stdin).read()
    elif text.startswith("@"):
        where = text[1:]
        try:
            text = Path(where).read_text()
        except FileNotFoundError:
            raise PayloadError(f"no such file: {where}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise PayloadError(f"cannot read {where}: {exc}") from None
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise PayloadError(f"{where} must be a JSON object, got {type(payload).__name__}")
    return payload


def workflow_payload(path: str) -> dict[str, Any]:
    """A ComfyUI job from a "Save (API)" file (``@`` optional; ``-``: stdin): ``{"workflow": ...}``.
    A file that already is a job (a ``workflow`` key) is taken as it is."""
    graph = read_payload(path if path == "-" or path.startswith("@") else "@" + path)
    return graph if isinstance(graph.get("workflow"), dict) else {"workflow": graph}


def monitor_url(settings: Settings) -> str:
    """The monitor the commands ask: ``JOBQUEUE_MONITOR_URL``, else the local one (under its
    ``JOBQUEUE_MONITOR_URL_PREFIX``)."""
    prefix = settings.monitor_url_prefix.strip().strip("/")
    local = f"http://{settings.monitor_host}:{settings.monitor_port}" + (f"/{prefix}" if prefix else "")
    return (settings.monitor_url or local).rstrip("/")


def ask_monitor(settings: Settings, path: str, params: dict[str, Any] | None = None) -> Any:
    """GET ``path`` of the monitor's API as JSON, as ``Authorization: Bearer`` the API key
    (``JOBQUEUE_MONITOR_API_KEY``), else the monitor token, when set (needed once auth is on)."""
    query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None})
    url = monitor_url(settings) + path + (f"?{query}" if query else "")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    credential = settings.monitor_api_key or settings.monitor_token
    if credential:
        request.add_header("Authorization", f"Bearer {credential}")
    try:
        with urllib.request.urlopen(request, timeout=ASK_TIMEOUT) as response:  # noqa: S310 (http(s) only)
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except Exception:
            message = exc.reason
        raise CommandError(f"the monitor at {monitor_url(settings)} answered {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise CommandError(f"the monitor at {monitor_url(settings)} does not answer ({exc}); "
                           "is it running? is JOBQUEUE_MONITOR_URL right?") from None


def list_jobs(settings: Settings, status: str | None, service: str | None, limit: int) -> list[dict[str, Any]]:
    """The newest jobs, as the monitor's ``GET /api/jobs`` gives them."""
    found = ask_monitor(settings, "/api/jobs", {"state": status, "service": service, "limit": limit})
    return list(found["jobs"])


def fleet_from_broker(app: Any, timeout: float = ASK_TIMEOUT / 5) -> list[dict[str, Any]]:
    """The online workers as they answer ``connector_status``, shaped like the monitor's workers."""
    replies = app.control.broadcast(CONTROL_CONNECTOR_STATUS, reply=True, timeout=timeout) or []
    workers = []
    for reply in replies:
        for name, snapshot in (reply or {}).items():
            if not isinstance(snapshot, dict):
                continue
            running = snapshot.get("running") or []
            workers.append({"name": snapshot.get("worker") or name, "status": "online",
                            "machine_id": snapshot.get("machine_id"), "current_job": running[0] if running else None,
                            "connectors": snapshot.get("connectors") or {}})
    return sorted(workers, key=lambda w: str(w["name"]))


def fleet(settings: Settings, app: Any) -> tuple[str, list[dict[str, Any]]]:
    """``(source, workers)``: from the monitor when ``JOBQUEUE_MONITOR_URL`` is set, else the broker."""
    if settings.monitor_url:
        return monitor_url(settings), list(ask_monitor(settings, "/api/workers")["workers"])
    return "broker", fleet_from_broker(app)


def _badge(service: str, connector: Any) -> str:
    status = connector.get("status") if isinstance(connector, dict) else None
    stale = " (stale)" if isinstance(connector, dict) and connector.get("stale") else ""
    return f"{service}:{status or '?'}{stale}"


def table(rows: list[list[str]], header: list[str]) -> str:
    """Rows in aligned columns under ``header``."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])


def workers_table(workers: list[dict[str, Any]]) -> str:
    """One line per worker: name, status, machine, connector badges (``service:status``), job."""
    rows = [[str(w.get("name")), str(w.get("status")), str(w.get("machine_id") or "-"),
             " ".join(_badge(s, c) for s, c in sorted((w.get("connectors") or {}).items())) or "-",
             str(w.get("current_job") or "-")] for w in workers]
    return table(rows, ["WORKER", "STATUS", "MACHINE", "CONNECTORS", "JOB"])


def jobs_table(jobs: list[dict[str, Any]]) -> str:
    """One line per job: id, status, service, worker, why it waits (or its error)."""
    def note(job: dict[str, Any]) -> str:
        error = job.get("error") if isinstance(job.get("error"), dict) else None
        return str(job.get("waiting_for") or (error or {}).get("message") or "")

    rows = [[str(j.get("id")), str(j.get("status")), str(j.get("service")), str(j.get("worker") or "-"), note(j)]
            for j in jobs]
    return table(rows, ["ID", "STATUS", "SERVICE", "WORKER", "NOTE"])


def download_outputs(settings: Settings, job_id: str, dest: Path) -> list[Path]:
    """Copy every file of job ``job_id`` from the output store into ``dest``; return the copies.

    Raises :class:`CommandError` when the job has no files in the store."""
    if not is_safe_name(job_id):
        raise CommandError(f"not a job id: {job_id!r}")
    store = OutputStore.from_settings(settings)
    names = store.names(job_id)
    if not names:
        raise CommandError(f"job {job_id} has no files in the output store {store.url}")
    dest.mkdir(parents=True, exist_ok=True)
    copies = []
    for name in names:
        target = dest / name
        with target.open("wb") as fh:
            for chunk in store.stream(job_id, name):
                fh.write(chunk)
        copies.append(target)
    return copies
