"""API keys for admins: ``GET/POST /api/keys``, ``POST /api/keys/<id>/revoke`` and the admin
page ``/admin`` (keys and the audit trail). The CLI does the same on the store
(``jobqueue keys create|list|revoke``). A new key is shown once, in the answer that creates it.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, current_app, g, jsonify, render_template, request

from monitor.store.access import create_key, list_keys, parse_duration, revoke_key
from monitor.web.access import current_identity
from monitor.web.routes import Limit, Role, route
from monitor.web.schemas import KEY, KEY_REQUEST, KEYS, NEW_KEY

bp = Blueprint("keys", __name__)

#: Roles a key can have.
KEY_ROLES = ("viewer", "operator", "admin")
def _store() -> Any:
    return current_app.extensions["jobqueue_monitor"].store


@route(bp, "/api/keys", role=Role.ADMIN, summary="API keys (never their secrets)", response=KEYS)
def keys() -> Any:
    return jsonify({"keys": list_keys(_store())})


@route(bp, "/api/keys", method="POST", role=Role.ADMIN, summary="Create an API key (its secret is shown once)",
       body=KEY_REQUEST, response=NEW_KEY, status=201, errors=(400,), limit=Limit.CONTROL, audit="key.create",
       control=True)
def create() -> Any:
    from monitor.web.responses import error_response

    body = request.get_json(silent=True)
    if not isinstance(body, dict) or set(body) - {"role", "name", "tenant", "expires_in"}:
        return error_response(400, "bad_request", "send {role, name?, tenant?, expires_in?} and nothing else")
    role, name, tenant = body.get("role"), body.get("name", ""), body.get("tenant")
    if role not in KEY_ROLES:
        return error_response(400, "bad_request", f"role must be one of {list(KEY_ROLES)}")
    if not isinstance(name, str) or len(name) > 255 or not (tenant is None or isinstance(tenant, str) and 0 < len(tenant) <= 255):
        return error_response(400, "bad_request", "name and tenant must be strings of at most 255 characters")
    expires_at = None
    if body.get("expires_in") is not None:
        try:
            expires_at = time.time() + parse_duration(body["expires_in"])
        except ValueError as exc:
            return error_response(400, "bad_request", str(exc))
    secret, info = create_key(_store(), role, name=name, tenant=tenant, expires_at=expires_at,
                              created_by=current_identity().subject)
    g.jobqueue_audit_target = f"key:{info['id']}"
    g.jobqueue_audit_detail = f"role={role} tenant={tenant or '-'}"
    return jsonify({"key": secret, "info": info}), 201


@route(bp, "/api/keys/<key_id>/revoke", method="POST", role=Role.ADMIN, summary="Revoke an API key",
       body={"type": "object"}, response=KEY, errors=(404,), limit=Limit.CONTROL, audit="key.revoke", control=True)
def revoke(key_id: str) -> Any:
    from monitor.web.responses import error_response

    found = revoke_key(_store(), key_id) if len(key_id) <= 32 else None
    if found is None:
        return error_response(404, "not_found", f"no key {key_id!r}")
    return jsonify(found)


@route(bp, "/admin", role=Role.ADMIN, summary="The admin page: API keys and the audit trail", content="text/html",
       page=True)
def admin_page() -> str:
    return render_template("admin.html", page="admin")
