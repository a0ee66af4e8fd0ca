"""ComfyUI's REST side as the connector uses it: one kept-alive HTTP session, JSON answers,
where a prompt is (queue, history, lost) and how to stop one.

An unreachable ComfyUI raises :class:`jobqueue.errors.ServiceUnavailable`; a timeout is left
to the caller as :class:`requests.Timeout`, because what it means (stalled, not reached,
unknown) depends on the moment. What the answers mean is read by the pure
:mod:`jobqueue.connectors.comfyui.protocol`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import requests

from jobqueue.connectors.comfyui.protocol import history_entry, queue_position, queue_snapshot
from jobqueue.errors import ServiceUnavailable

log = logging.getLogger(__name__)


def session_for(base_url: str) -> requests.Session:
    """A session for one fixed server that reads the environment's HTTP settings once.

    requests looks up proxies (``*_proxy``/``no_proxy``), the CA bundle and ``.netrc`` on every
    call, scanning ``os.environ`` each time (about 0.4 ms a call, several calls a job). The URL
    never changes, so the same settings are resolved here once and the per-call lookup is off.
    """
    session = requests.Session()
    session.proxies.update(requests.utils.get_environ_proxies(base_url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    netrc = requests.utils.get_netrc_auth(base_url)
    if netrc:
        session.auth = netrc
    session.trust_env = False
    return session


def reason(exc: BaseException) -> str:
    """The innermost, readable reason of a requests connection error."""
    text = str(exc)
    for marker in ("Connection refused", "Connection reset", "Name or service not known", "timed out"):
        if marker in text:
            return marker.lower()
    return text[:200]


class ComfyUIRest:
    """REST calls to one ComfyUI (``base_url`` without a trailing slash)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._http = session_for(base_url)
        #: Whether this ComfyUI has the atomic ``POST /api/jobs/{id}/cancel`` (None: not tried yet).
        self.atomic_cancel: bool | None = None

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, *, timeout: float, **kwargs: Any) -> requests.Response:
        """One REST call; an unreachable ComfyUI raises :class:`ServiceUnavailable`."""
        try:
            return self._http.request(method, f"{self.base_url}{path}", timeout=(min(timeout, 3.0), timeout), **kwargs)
        except requests.ConnectionError as exc:
            raise ServiceUnavailable(f"ComfyUI at {self.base_url} is unreachable: {reason(exc)}",
                                     {"url": self.base_url, "path": path, "unreachable": True}) from None

    def get_json(self, path: str, timeout: float) -> Any:
        response = self.request("GET", path, timeout=timeout)
        if response.status_code != 200:
            raise ServiceUnavailable(f"ComfyUI answered {response.status_code} to GET {path}",
                                     {"url": self.base_url, "path": path})
        try:
            return response.json()
        except ValueError:
            raise ServiceUnavailable(f"ComfyUI sent non-JSON to GET {path}", {"url": self.base_url}) from None

    def history(self, prompt_id: str, timeout: float) -> dict[str, Any] | None:
        """The prompt's /history entry, or None while ComfyUI has none."""
        return history_entry(self.get_json(f"/history/{prompt_id}", timeout), prompt_id)

    def where(self, prompt_id: str, timeout: float) -> tuple[str, Any]:
        """Ask /queue, then /history: ``history`` (entry), ``running``/``pending`` (snapshot),
        ``lost``, or ``unknown`` when ComfyUI did not answer in time."""
        try:
            queue = self.get_json("/queue", timeout)
            entry = self.history(prompt_id, timeout)
        except requests.Timeout:
            return "unknown", None
        if entry is not None:
            return "history", entry
        where = queue_position(queue, prompt_id)
        if where is None:
            # It may have ended between the two answers: ask /history once more before calling it lost.
            try:
                entry = self.history(prompt_id, timeout)
            except requests.Timeout:
                return "unknown", None
            if entry is not None:
                return "history", entry
            return "lost", None
        return where, queue_snapshot(queue)

    def remove(self, prompt_id: str, where: str, timeout: float) -> None:
        """Delete a ``pending`` prompt from the queue; interrupt a ``running`` one (targeted).

        A ComfyUI newer than 0.3.64 cancels atomically (``POST /api/jobs/{id}/cancel``: it
        interrupts only if that prompt is still the one running, where ``/interrupt`` could land
        on the next prompt if ours ended in between); it is used whenever the server has it
        (a 404/405 the first time means it has not)."""
        if self.atomic_cancel is not False:
            response = self.request("POST", f"/api/jobs/{prompt_id}/cancel", timeout=timeout)
            if response.status_code == 200:
                self.atomic_cancel = True
                return
            if response.status_code in (404, 405):
                self.atomic_cancel = False
        if where == "pending":
            self.request("POST", "/queue", json={"delete": [prompt_id]}, timeout=timeout)
        elif where == "running":
            self.request("POST", "/interrupt", json={"prompt_id": prompt_id}, timeout=timeout)

    def stop_prompt(self, prompt_id: str, timeout: float) -> str | None:
        """Remove the prompt from ComfyUI's queue, or interrupt it if it runs.

        Returns where it was (``pending``, ``running``) or None; never raises.
        """
        try:
            where = queue_position(self.get_json("/queue", timeout), prompt_id)
            if where is not None:
                self.remove(prompt_id, where, timeout)
            return where
        except (ServiceUnavailable, requests.RequestException) as exc:
            log.warning("comfyui: could not stop prompt %s: %s", prompt_id, exc)
            return None
