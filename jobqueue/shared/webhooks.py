"""What both sides know of webhooks: the URL a client may give (:func:`check_webhook_url`,
at submit) and the record of a job's tries in the result backend, written by the worker that
delivers (:mod:`jobqueue.worker.webhooks`) and read by clients and the monitor's job page.

The record: one Redis list per job (:func:`jobqueue.shared.records.webhook_attempts_key`), one JSON
object per try, oldest first: ``{webhook_id, try, at, url, status_code, error, delivered,
worker, duration}``; and, once a delivery got a 2xx, its delivered mark
(:func:`jobqueue.shared.records.webhook_delivered_key`). Both expire with the results.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from jobqueue.errors import SubmitError, TargetRefused, WebhookTargetRefused
from jobqueue.shared.records import webhook_attempts_key, webhook_delivered_key
from jobqueue.shared.safe_http import AddressGuard


def check_webhook_url(url: Any, allowed_networks: tuple[str, ...] = ()) -> str:
    """Return ``url`` if it is an absolute http(s) URL with a host; raise :class:`SubmitError`,
    or :class:`WebhookTargetRefused` when its host is an IP literal outside the public
    addresses and ``allowed_networks`` (a name is judged by the worker when it connects)."""
    if not isinstance(url, str) or not url.strip():
        raise SubmitError(f"webhook_url must be an http(s) URL, got {url!r}")
    parts = urlsplit(url.strip())
    try:
        host = parts.hostname
        parts.port  # noqa: B018 - a malformed port raises here, not in the worker
    except ValueError as exc:
        raise SubmitError(f"webhook_url is malformed ({exc}): {url!r}") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise SubmitError(f"webhook_url must be an http(s) URL with a host, got {url!r}")
    try:
        AddressGuard.from_cidrs(allowed_networks).check_host(host)
    except TargetRefused as exc:
        raise WebhookTargetRefused(f"webhook_url {url.strip()!r} refused: {exc.message}") from None
    return url.strip()


def queue_attempt(pipe: Any, job_id: str, delivery_id: str, record: dict[str, Any], *, expires: int) -> None:
    """Add one try's record (and, when it delivered, the delivery's mark) to ``pipe``."""
    pipe.rpush(webhook_attempts_key(job_id), json.dumps(record))
    pipe.expire(webhook_attempts_key(job_id), expires)
    if record.get("delivered"):
        pipe.set(webhook_delivered_key(delivery_id), "1", ex=expires)


def was_delivered(client: Any, delivery_id: str) -> bool:
    """True once a try of ``delivery_id`` got a 2xx."""
    return bool(client.exists(webhook_delivered_key(delivery_id)))


def read_attempts(client: Any, job_id: str) -> list[dict[str, Any]]:
    """Every recorded try of ``job_id``'s webhook, oldest first (empty when none)."""
    attempts = []
    for raw in client.lrange(webhook_attempts_key(job_id), 0, -1):
        try:
            attempts.append(json.loads(raw))
        except ValueError:
            continue
    return attempts
