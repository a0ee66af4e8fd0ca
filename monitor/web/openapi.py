"""``GET /api/openapi.json``: the monitor's routes as an OpenAPI 3.1 document, generated from
the same declarations (:mod:`monitor.web.routes`) that decide who may call each route.

Every route of the app's URL map is in it, with the role it needs as ``x-role`` (and its rate
limit as ``x-rate-limit``, its audit action as ``x-audit``); docs/api.md is the prose version.
Tools, the API fuzz (tests/monitor/web/test_fuzz.py) and the route tests
(tests/monitor/web/test_routes.py) read it.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify

from monitor.web.routes import Role, RouteSpec, collect, route
from monitor.web.schemas import ERROR

bp = Blueprint("openapi", __name__)

_ERROR_NAMES = {400: "bad request", 401: "no or wrong credentials", 403: "refused (role, cross-site, not JSON, read-only)",
                404: "not found", 409: "conflict", 413: "body too large", 429: "rate limited (see Retry-After)",
                503: "a backend is unavailable"}
_PARAM = re.compile(r"<(?:[a-z]+:)?([A-Za-z_][A-Za-z0-9_]*)>")
_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"basic": []}, {"session": []}]


def openapi_path(rule: str) -> str:
    """``/api/workers/<path:name>`` → ``/api/workers/{name}``."""
    return _PARAM.sub(r"{\1}", rule)


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _describe(spec: RouteSpec, code: int) -> str:
    """An error's description; a 429 a route declares itself is its queue being full (QueueFull)
    or its tenant's quota reached (QuotaExceeded), beside the rate limit's 429 when the route
    has one too."""
    if code == 429 and 429 in spec.errors:
        return "queue full or tenant quota reached (see Retry-After)" + (", or rate limited" if spec.limit is not None else "")
    return _ERROR_NAMES.get(code, "error")


def _responses(spec: RouteSpec) -> dict[str, Any]:
    if spec.response is not None:
        ok = _json(spec.response, "OK")
    else:
        ok = {"description": "OK", "content": {spec.content: {}}}
    errors = set(spec.errors)
    if spec.role is not Role.PUBLIC:
        errors |= {401, 403}
    if spec.method != "GET":
        errors |= {400, 403, 413}
    if spec.limit is not None:
        errors.add(429)
    out = {str(spec.status): ok}
    out.update({str(code): _json(ERROR, _describe(spec, code)) for code in sorted(errors)})
    if not spec.rule.startswith("/api") and spec.response is None:
        # A page or a file: its own errors are Flask's HTML ones; only refusals are JSON.
        out.update({str(code): {"description": _ERROR_NAMES.get(code, "error"), "content": {"text/html": {}}}
                    for code in spec.errors if code not in (401, 403, 429)})
    if spec.page:
        out["302"] = {"description": "not logged in: redirect to /login"}
    return out


def operation(endpoint: str, spec: RouteSpec, rule: str) -> dict[str, Any]:
    """The OpenAPI operation of one declared route."""
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
              for name in _PARAM.findall(rule)]
    op: dict[str, Any] = {"operationId": endpoint, "summary": spec.summary, "x-role": spec.role.value,
                          "parameters": params + [dict(q) for q in spec.query], "responses": _responses(spec)}
    op["security"] = [] if spec.role is Role.PUBLIC else _SECURITY
    if spec.body is not None:
        op["requestBody"] = {"required": spec.body is not None and bool(spec.body.get("required")),
                             "content": {"application/json": {"schema": spec.body}}}
    if spec.limit is not None:
        op["x-rate-limit"] = spec.limit.value
    if spec.audit:
        op["x-audit"] = spec.audit
    return op


def document(app: Flask) -> dict[str, Any]:
    """The OpenAPI document of ``app`` (a fresh dict each call): every rule of its URL map."""
    specs = collect(app)
    paths: dict[str, Any] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        spec = specs.get(rule.endpoint)
        if spec is None:
            continue  # undeclared: refused, and tests/monitor/web/test_routes.py fails on it
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(openapi_path(rule.rule), {})[method.lower()] = operation(rule.endpoint, spec, rule.rule)
    return {
        "openapi": "3.1.0",
        "info": {"title": "jobqueue monitor", "version": "2",
                 "description": "x-role: the least role a route needs (public < viewer < operator < admin)."},
        "components": {"securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "the admin token, or an API key jq_..."},
            "basic": {"type": "http", "scheme": "basic"},
            "session": {"type": "apiKey", "in": "cookie", "name": "jobqueue_session"}}},
        "paths": paths,
    }


@route(bp, "/api/openapi.json", role=Role.VIEWER, summary="This document", response={"type": "object"})
def openapi() -> Any:
    """The OpenAPI document of this API."""
    return jsonify(document(current_app._get_current_object()))  # type: ignore[attr-defined]


def roles_table(app: Flask) -> str:
    """The roles × routes table of docs/security.md, from the declarations (a test keeps the
    document equal to it; regenerate with ``python -c "from monitor.app import
    print_roles_table; print_roles_table()"``)."""
    marks = {Role.PUBLIC: ("✓", "✓", "✓", "✓"), Role.VIEWER: ("", "✓", "✓", "✓"),
             Role.OPERATOR: ("", "", "✓", "✓"), Role.ADMIN: ("", "", "", "✓")}
    lines = ["| Route | Method | anyone | viewer | operator | admin | Rate limit | Audited as |",
             "|---|---|:-:|:-:|:-:|:-:|---|---|"]
    for path, item in document(app)["paths"].items():
        for method, op in item.items():
            role = Role(op["x-role"])
            lines.append(f"| `{path}` | {method.upper()} | " + " | ".join(marks[role])
                         + f" | {op.get('x-rate-limit', '')} | {op.get('x-audit', '')} |")
    return "\n".join(lines)
