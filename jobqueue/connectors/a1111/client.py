"""The WebUI's REST routes as the ``a1111`` connector calls them: one session, one error for an
unreachable server, and what the server can do (task ids or not) once it is known.

Task ids: from A1111 1.8 (and on every Forge) an API request's ``force_task_id`` is tracked by
``modules/progress.py``, so ``POST /internal/progress {"id_task"}`` says whether it is queued,
running (``active``) or ``completed``. A 1.7 WebUI has the route but never registers API
requests; one started with ``--nowebui`` has no ``/internal/*`` routes at all. For both the
connector follows its job by the order of jobs instead (:mod:`jobqueue.connectors.a1111.ownership`).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import requests

from jobqueue.connectors.a1111.answers import reason
from jobqueue.errors import ServiceUnavailable

log = logging.getLogger(__name__)


def has_task_ids(version: str | None) -> bool | None:
    """Whether a WebUI of ``version`` (``/internal/sysinfo``'s "Version") tracks API task ids:
    A1111 1.8 and later, and every Forge (``f2.0.1v1.10.1-...``: Forge branched after the change);
    None when the version says nothing."""
    if not version:
        return None
    if version.startswith("f"):
        return True
    match = re.match(r"v?(\d+)\.(\d+)", version)
    if match is None:
        return None
    return (int(match.group(1)), int(match.group(2))) >= (1, 8)


class WebUIClient:
    """REST calls to one WebUI (``base_url``); a refused connection raises :class:`ServiceUnavailable`."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        #: False once the WebUI showed it keeps no task ids for API requests (version or 404).
        self.task_ids = True

    def close(self) -> None:
        self.session.close()

    def request(self, method: str, path: str, *, timeout: float, **kwargs: Any) -> requests.Response:
        try:
            return self.session.request(method, f"{self.base_url}{path}", timeout=(min(timeout, 3.0), timeout),
                                        **kwargs)
        except requests.ConnectionError as exc:
            raise ServiceUnavailable(f"the WebUI at {self.base_url} is unreachable: {reason(exc)}",
                                     {"url": self.base_url, "path": path}) from None

    def task(self, task_id: str, timeout: float) -> dict[str, Any] | None:
        """``/internal/progress`` of ``task_id`` (``active``, ``queued``, ``completed``), or None
        when the WebUI has no such route (noted: it is not asked again)."""
        answer = self.request("POST", "/internal/progress", timeout=timeout,
                              json={"id_task": task_id, "id_live_preview": -1, "live_preview": False})
        if answer.status_code == 404:
            self.task_ids = False
            return None
        if answer.status_code != 200:
            return {}
        body = answer.json()
        return body if isinstance(body, dict) else {}

    def interrupt(self, timeout: float = 3.0) -> None:
        """Interrupt the job the WebUI runs now. Only ``/interrupt``: the WebUI's sampler stops
        at its next step on it and ``process_images`` breaks out of its ``n_iter`` loop, so a
        ``/skip`` adds nothing, and a second POST can land on the next job, which ``state.begin``
        has just cleared of the interrupt (it skipped the first image of the job that came next)."""
        try:
            self.request("POST", "/sdapi/v1/interrupt", timeout=timeout)
        except (ServiceUnavailable, requests.RequestException) as exc:
            log.warning("a1111: could not POST /sdapi/v1/interrupt: %s", exc)
