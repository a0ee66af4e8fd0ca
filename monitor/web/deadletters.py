"""Dead letters: the poison messages workers moved aside (``<queue>.dead`` Redis lists).

Workers put every message they cannot decode there with the reason (see
:mod:`jobqueue.worker.poison`, :func:`jobqueue.shared.records.dead_letter_key`); ``GET /api/dead-letters`` shows how many each queue holds and
the newest items, and the fleet page shows the total. On RabbitMQ there are no such lists (a
rejected message goes to the queue's dead-letter exchange, if one is configured).
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, current_app, jsonify, request

from jobqueue.shared.records import DEAD_SUFFIX
from monitor.web.routes import Role, route
from monitor.web.schemas import DEAD_LETTERS, int_query
from monitor.web.tenancy import FLEET

bp = Blueprint("dead_letters", __name__)

#: Most dead-letter lists looked at (a SCAN of the broker's keys, bounded).
MAX_LISTS = 200
#: SCAN rounds at most (each asks Redis for ~1000 keys).
MAX_SCAN_ROUNDS = 100
#: Most items returned per queue.
MAX_ITEMS = 100


def _record(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {"reason": "unreadable dead-letter record", "raw": raw[:1000].decode("utf-8", "replace")}
    return value if isinstance(value, dict) else {"reason": "unreadable dead-letter record", "raw": str(value)[:1000]}


def read_dead_letters(settings: Any, items: int) -> list[dict[str, Any]]:
    """``[{"queue", "count", "items"}]`` for every ``*.dead`` list on the Redis broker."""
    from jobqueue.transport.redis_clients import redis_client

    client = redis_client(settings.broker_url, settings, socket_timeout=3, socket_connect_timeout=3)
    try:
        keys: list[bytes] = []
        cursor, rounds = 0, 0
        while rounds < MAX_SCAN_ROUNDS and len(keys) < MAX_LISTS:
            cursor, found = client.scan(cursor, match="*" + DEAD_SUFFIX, count=1000, _type="list")
            keys.extend(k if isinstance(k, bytes) else k.encode() for k in found)
            rounds += 1
            if cursor == 0:
                break
        keys = sorted(set(keys))[:MAX_LISTS]
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.llen(key)
            if items > 0:  # LRANGE 0 -1 would be the whole list
                pipe.lrange(key, 0, items - 1)
            else:
                pipe.echo(b"")
        replies = pipe.execute() if keys else []
    finally:
        client.close()
    out = []
    for i, key in enumerate(keys):
        name = key.decode("utf-8", "replace")
        count, raw_items = replies[2 * i], replies[2 * i + 1] if items > 0 else []
        out.append({"queue": name[: -len(DEAD_SUFFIX)], "list": name, "count": int(count),
                    "items": [_record(raw) for raw in raw_items]})
    return out


@route(bp, "/api/dead-letters", role=Role.VIEWER, summary="Poison messages per queue (the whole fleet's: not for a tenant)",
       query=(int_query("items", 0, MAX_ITEMS),), response=DEAD_LETTERS, errors=(400, 403, 503), **FLEET)
def dead_letters() -> Any:
    """Poison messages per queue: ``{"total", "queues": [{"queue", "list", "count", "items"}]}``
    (``?items=N``, default 20, newest first; 0 for counts only)."""
    from monitor.web.responses import error_response

    settings = current_app.extensions["jobqueue_monitor"].settings
    try:
        items = int(request.args.get("items", "20"))
    except ValueError:
        items = -1
    if not 0 <= items <= MAX_ITEMS:
        return error_response(400, "bad_request", f"items must be 0..{MAX_ITEMS}")
    if not settings.is_redis:
        return jsonify({"total": 0, "queues": [], "supported": False})
    try:
        queues = read_dead_letters(settings, items)
    except Exception as exc:
        current_app.logger.warning("cannot read dead letters: %s", exc)
        return error_response(503, "broker_unavailable", "cannot read dead letters from the broker")
    return jsonify({"total": sum(q["count"] for q in queues), "queues": queues, "supported": True})
