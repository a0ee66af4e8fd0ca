"""JSON schemas of the API's bodies and parameters, used by the route declarations
(:mod:`monitor.web.routes`) and so by ``/api/openapi.json``.

They follow the shapes of :mod:`monitor.store.serialise` (the public contract);
tests/monitor/web/test_routes.py validates real responses against them.
"""

from __future__ import annotations

from typing import Any

from jobqueue.states import JobStatus

Schema = dict[str, Any]


def nullable(kind: str | list[str]) -> Schema:
    kinds = [kind] if isinstance(kind, str) else list(kind)
    return {"type": [*kinds, "null"]}


def obj(required: dict[str, Schema], **optional: Schema) -> Schema:
    """An object with ``required`` properties (more allowed)."""
    return {"type": "object", "required": list(required), "properties": {**required, **optional}}


def str_query(name: str, enum: list[str] | None = None) -> Schema:
    schema: Schema = {"type": "string"} if enum is None else {"type": "string", "enum": enum}
    return {"name": name, "in": "query", "required": False, "schema": schema}


def int_query(name: str, low: int, high: int) -> Schema:
    return {"name": name, "in": "query", "required": False,
            "schema": {"type": "integer", "minimum": low, "maximum": high}}


def num_query(name: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": {"type": "number"}}


STR, INT, NUM, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
OBJECT, ARRAY = {"type": "object"}, {"type": "array"}
ANY: Schema = {}
JOB_STATES = [s.value for s in JobStatus]

ERROR = obj({"error": obj({"code": STR, "message": STR})})

JOB = obj({
    "id": STR, "name": nullable("string"), "service": nullable("string"), "status": STR,
    "worker": nullable("string"), "machine_id": nullable("string"), "queue": nullable("string"),
    "priority": nullable("integer"), "workflow_id": nullable("string"), "step": nullable("integer"),
    "tenant": nullable("string"), "attempt": INT, "retries": INT, "progress": OBJECT, "submitted_at": nullable("number"),
    "received_at": nullable("number"), "started_at": nullable("number"), "finished_at": nullable("number"),
    "runtime": nullable("number"), "eta_seconds": nullable("number"), "queue_position": nullable("integer"),
    "error": nullable("object"), "result": ANY, "payload_summary": nullable("string"),
    "requires": nullable("object"), "seq": INT,
    "args": nullable("string"), "kwargs": nullable("string"), "parent_id": nullable("string"),
    "root_id": nullable("string"), "group_id": nullable("string"), "eta": nullable("number"),
    "expires": nullable("number"), "scheduled": BOOL, "routing_key": nullable("string"),
    "exchange": nullable("string"),
}, events={"type": "array", "items": obj({"type": STR, "timestamp": nullable("number")})},
    children={"type": "array", "items": STR, "description": "ids of the tasks this one started"})

CONNECTOR = obj({"status": STR, "message": STR, "details": OBJECT, "updated_at": nullable("number"),
                 "stale": BOOL})
WORKER = obj({
    "name": STR, "machine_id": nullable("string"), "gpu": nullable("integer"), "status": STR,
    "connectors": {"type": "object", "additionalProperties": CONNECTOR}, "services": ARRAY, "queues": ARRAY,
    "active": INT, "processed": nullable("integer"), "failed": nullable("integer"), "current_job": nullable("string"),
    "heartbeat_at": nullable("number"), "seq": INT,
})
MACHINE = obj({"id": STR, "workers": {"type": "array", "items": STR}, "status": STR,
               "last_seen": nullable("number"), "seq": INT})

CANVAS = obj({"root": STR, "truncated": BOOL, "nodes": {"type": "array", "items": obj({
    "id": STR, "name": nullable("string"), "status": STR, "parent_id": nullable("string"),
    "root_id": nullable("string"), "group_id": nullable("string"), "seq": INT})}})
INSPECT = obj({"worker": STR}, **{k: ANY for k in ("stats", "registered", "active", "reserved", "scheduled",
                                                   "revoked", "active_queues", "conf")})
POOL_REQUEST: Schema = {"type": "object", "required": ["action"], "properties": {
    "action": {"type": "string", "enum": ["grow", "shrink", "autoscale", "restart"]},
    "n": {"type": "integer", "minimum": 1}, "min": {"type": "integer", "minimum": 0},
    "max": {"type": "integer", "minimum": 1}}}
QUEUE_REQUEST: Schema = {"type": "object", "required": ["action", "queue"], "properties": {
    "action": {"type": "string", "enum": ["add", "cancel"]}, "queue": {"type": "string", "minLength": 1}}}
LIMITS_REQUEST: Schema = {"type": "object", "properties": {
    "rate_limit": {"type": "string", "description": "e.g. 10/m; empty: none"},
    "time_limit": {"type": ["number", "null"]}, "soft_time_limit": {"type": ["number", "null"]},
    "worker": {"type": "string", "description": "only this worker (default: all)"}}}
REVOKE_REQUEST: Schema = {"type": "object", "properties": {
    "terminate": {"type": "boolean"}, "signal": {"type": "string", "default": "SIGTERM"}}}
JOB_PAGE = obj({"jobs": {"type": "array", "items": JOB}, "total": INT, "limit": INT, "offset": INT,
                "sort": STR, "order": {"type": "string", "enum": ["asc", "desc"]}})
STATE = obj({"seq": INT, "machines": {"type": "array", "items": MACHINE}, "workers": {"type": "array", "items": WORKER},
             "jobs": {"type": "array", "items": JOB}})
WORKERS = obj({"workers": {"type": "array", "items": WORKER}})
MACHINES = obj({"machines": {"type": "array", "items": MACHINE}})
ESTIMATES = obj({"at": NUM, "jobs": {"type": "object", "additionalProperties": obj(
    {"position": INT, "wait": nullable("number"), "load": NUM})}})
WAITING = obj({"waiting": {"type": "object", "additionalProperties": STR}})
QUEUES = obj({"queues": {"type": "array", "items": obj({"name": STR, "depth": INT})}})
BROKER = obj({"transport": STR, "queues": {"type": "array", "items": obj({
    "name": STR, "depth": INT, "levels": {"type": "object", "additionalProperties": INT},
    "consumers": INT, "workers": {"type": "array", "items": STR}})}})
PURGED = obj({"queue": STR, "removed": INT, "jobs_cancelled": INT, "tasks": {"type": "array", "items": STR}})
STATS = obj({"services": OBJECT, "history": ANY, "queues": OBJECT})
WORKFLOW = obj({"steps": {"type": "array", "items": JOB}})
DEAD_LETTERS = obj({"total": INT, "queues": ARRAY, "supported": BOOL})
WEBHOOKS = obj({"attempts": {"type": "array", "items": OBJECT}, "webhook_url": nullable("string")})
AUTH_INFO = obj({"auth_required": BOOL, "read_only": BOOL, "authenticated": BOOL, "role": nullable("string"),
                 "subject": nullable("string"), "tenant": nullable("string"), "session": BOOL})
HEALTH = obj({"ok": BOOL, "seq": INT, "collector": nullable("object"), "repair": nullable("object"),
              "uptime": NUM}, role={"type": "string", "enum": ["single", "leader", "standby"]},
             lease=nullable("object"))
OK = obj({"ok": BOOL})
CONTROL_REPLY = obj({"ok": BOOL}, replies=ARRAY)
SUBMITTED = obj({"jobs": {"type": "array", "items": obj({"id": STR})}})
RETRIED = obj({"id": STR})

KEY = obj({"id": STR, "name": STR, "role": {"type": "string", "enum": ["viewer", "operator", "admin"]},
           "tenant": nullable("string"), "created_at": NUM, "created_by": STR, "expires_at": nullable("number"),
           "revoked_at": nullable("number"), "state": {"type": "string", "enum": ["active", "expired", "revoked"]}})
KEYS = obj({"keys": {"type": "array", "items": KEY}})
NEW_KEY = obj({"key": STR, "info": KEY})
KEY_REQUEST: Schema = {
    "type": "object", "additionalProperties": False, "required": ["role"],
    "properties": {"role": {"type": "string", "enum": ["viewer", "operator", "admin"]}, "name": STR,
                   "tenant": nullable("string"), "expires_in": {"type": ["string", "number", "null"]}},
}
AUDIT_ENTRY = obj({"id": INT, "at": NUM, "subject": STR, "role": nullable("string"), "tenant": nullable("string"),
                   "address": nullable("string"), "action": STR, "target": STR, "outcome": STR, "status": INT,
                   "detail": STR})
AUDIT_PAGE = obj({"entries": {"type": "array", "items": AUDIT_ENTRY}, "total": INT, "limit": INT, "offset": INT})
LOGIN_REQUEST: Schema = {"type": "object", "required": ["credential"], "properties": {"credential": STR}}
LOGIN_REPLY = obj({"ok": BOOL, "subject": STR, "role": STR, "tenant": nullable("string")})

#: ``POST /api/jobs``: every field the API accepts (it refuses any other).
SUBMIT: Schema = {
    "type": "object", "additionalProperties": False, "required": ["service"],
    "properties": {
        "service": {"type": "string", "minLength": 1}, "payload": {"type": "object"},
        "priority": {"type": "integer", "minimum": 0, "maximum": 9}, "queue": STR,
        "timeout": {"type": "number", "exclusiveMinimum": 0},
        "count": {"type": "integer", "minimum": 1, "maximum": 1000},
        "workflow_id": STR, "step": {"type": "integer", "minimum": 1},
        "webhook_url": {"type": "string", "format": "uri"},
        "tenant": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                   "description": "the job's tenant; only a caller without a tenant of its own may name one"},
        "requires": {"type": "object", "additionalProperties": False, "description": "what a worker must have",
                     "properties": {"models": {"type": "array", "items": {"type": "string", "minLength": 1}},
                                    "vram_gb": {"type": "number", "exclusiveMinimum": 0},
                                    "tags": {"type": "array", "items": {"type": "string", "minLength": 1}}}},
    },
}
EMPTY: Schema = {"type": "object"}

JOBS_QUERY = (
    str_query("state", JOB_STATES), str_query("service"), str_query("worker"), str_query("machine"),
    num_query("since"), num_query("until"), str_query("q"), str_query("workflow"), str_query("name"),
    str_query("queue"), int_query("limit", 1, 1000),
    int_query("offset", 0, 10**9), str_query("sort", ["submitted", "finished", "runtime"]),
    str_query("order", ["asc", "desc"]), str_query("tenant"),
)
