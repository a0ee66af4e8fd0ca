"""``GET /api/openapi.json``: the monitor's REST API as an OpenAPI 3.1 document.

Hand-written next to the routes (docs/api.md is the prose version): tools and the API fuzz
(tests/monitor/web/test_fuzz.py) read it to know every operation, its parameters and bodies.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from jobqueue.states import JobStatus

bp = Blueprint("openapi", __name__)

_ERROR = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "code": {"type": "string"}, "message": {"type": "string"}}}}}
_JOB_STATES = [s.value for s in JobStatus]


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    names = {400: "bad request", 401: "credentials missing or wrong", 403: "refused (cross-site, not JSON, read-only)",
             404: "not found", 409: "conflict", 413: "body too large",
             429: "queue full (Retry-After)", 503: "broker unavailable"}
    return {str(code): _json(_ERROR, names[code]) for code in codes}


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _get(summary: str, params: list[dict[str, Any]] | None = None, *errors: int) -> dict[str, Any]:
    return {"get": {"summary": summary, "parameters": params or [],
                    "responses": {"200": _json({"type": "object"}), **_errors(*errors)}}}


def _post(summary: str, params: list[dict[str, Any]], body: dict[str, Any], ok: str, *errors: int) -> dict[str, Any]:
    return {"post": {"summary": summary, "parameters": params, "security": [{"bearer": []}, {"basic": []}, {}],
                     "requestBody": {"required": False, "content": {"application/json": {"schema": body}}},
                     "responses": {ok: _json({"type": "object"}), **_errors(400, 401, 403, 413, *errors)}}}


_SUBMIT = {
    "type": "object", "additionalProperties": False, "required": ["service"],
    "properties": {
        "service": {"type": "string", "minLength": 1}, "payload": {"type": "object"},
        "priority": {"type": "integer", "minimum": 0, "maximum": 9}, "queue": {"type": "string"},
        "timeout": {"type": "number", "exclusiveMinimum": 0}, "count": {"type": "integer", "minimum": 1, "maximum": 1000},
        "workflow_id": {"type": "string"}, "step": {"type": "integer", "minimum": 1},
        "webhook_url": {"type": "string", "format": "uri"},
        "requires": {"type": "object", "additionalProperties": False, "properties": {
            "models": {"type": "array", "items": {"type": "string", "minLength": 1}},
            "vram_gb": {"type": "number", "exclusiveMinimum": 0},
            "tags": {"type": "array", "items": {"type": "string", "minLength": 1}}}},
    },
}
_EMPTY = {"type": "object"}


def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh dict each call)."""
    job, worker = [_path("job_id")], [_path("name")]
    paths: dict[str, Any] = {
        "/api/state": _get("Everything at one sequence number", [_query("finished_limit", {
            "type": "integer", "minimum": 0, "maximum": 100000})], 400),
        "/api/machines": _get("Machines"),
        "/api/workers": _get("Workers"),
        "/api/workers/{name}": _get("One worker", worker, 404),
        "/api/jobs": {**_get("Jobs, filtered and paginated", [
            _query("state", {"type": "string", "enum": _JOB_STATES}), _query("service", {"type": "string"}),
            _query("worker", {"type": "string"}), _query("machine", {"type": "string"}),
            _query("since", {"type": "number"}), _query("until", {"type": "number"}), _query("q", {"type": "string"}),
            _query("workflow", {"type": "string"}), _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
            _query("offset", {"type": "integer", "minimum": 0}),
            _query("sort", {"type": "string", "enum": ["submitted", "finished", "runtime"]}),
            _query("order", {"type": "string", "enum": ["desc", "asc"]})], 400),
            **_post("Submit count jobs", [], _SUBMIT, "201", 429)},
        "/api/jobs/{job_id}": _get("One job with its timeline", job, 404),
        "/api/jobs/{job_id}/cancel": _post("Cancel a job", job, _EMPTY, "202", 404, 409),
        "/api/jobs/{job_id}/retry": _post("Submit a job again", job, _EMPTY, "201", 404, 409, 429),
        "/api/jobs/{job_id}/preview": _get("The job's latest live preview image", job, 404, 503),
        "/api/jobs/{job_id}/webhooks": _get("The job's webhook tries", job, 404, 503),
        "/api/jobs/{job_id}/payload": _get("The job's payload as submitted (secrets masked)", job, 404, 409, 503),
        "/api/waiting": _get("Why each queued job no online worker can run waits"),
        "/api/estimates": _get("Queue position and expected wait of every queued job"),
        "/api/workflows/{workflow_id}": _get("A workflow's steps", [_path("workflow_id")], 404),
        "/api/workers/{name}/drain": _post("Stop a worker taking jobs", worker, _EMPTY, "202", 404),
        "/api/workers/{name}/resume": _post("Let a drained worker take jobs", worker, _EMPTY, "202", 404),
        "/api/workers/{name}/shutdown": _post("Shut a worker down", worker, _EMPTY, "202", 404),
        "/api/queues": _get("Queue depths", None, 503),
        "/api/stats": _get("Completion times, throughput, failure patterns, hourly history", [_query("hours", {
            "type": "integer", "minimum": 1, "maximum": 9600})], 400),
        "/api/dead-letters": _get("Poison messages per queue", [_query("items", {
            "type": "integer", "minimum": 0, "maximum": 100})], 400, 503),
        "/api/auth": _get("Whether controls need credentials and this request has them"),
        "/api/services/{name}/schema": _get("JSON schema of a service's job payload", [_path("name")], 404),
        "/healthz": _get("Liveness of collector and writer", None, 503),
        "/api/openapi.json": _get("This document"),
        "/metrics": {"get": {"summary": "Prometheus metrics (text exposition, or OpenMetrics on request)",
                             "parameters": [], "responses": {"200": {"description": "OK", "content": {
                                 "text/plain": {"schema": {"type": "string"}}}}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "jobqueue monitor", "version": "1"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                           "basic": {"type": "http", "scheme": "basic"}}},
        "paths": paths,
    }


@bp.get("/api/openapi.json")
def openapi() -> Any:
    """The OpenAPI document of this API."""
    return jsonify(document())
