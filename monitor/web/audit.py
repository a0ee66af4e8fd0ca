"""The audit trail: who did what to which target, and how it ended.

Every route declared with ``audit="<action>"`` (controls, submit, key changes, login, logout)
is recorded after its response, whatever the outcome (done, refused by the access check or
the rate limit, failed; of callers without credentials only what :func:`worth_recording`
keeps): subject (``token``, ``basic:<user>``, ``key:<id>``, ``local``,
``anonymous``), role, tenant, address, action, target, outcome, HTTP status, time. Entries go
through the store's single writer (:meth:`monitor.ingest.writer.Writer.audit`), are kept
``JOBQUEUE_MONITOR_AUDIT_KEEP_DAYS`` and can be read at ``GET /api/audit`` (admins) — there is no
route that changes or deletes one.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request

from monitor.store.access import MAX_AUDIT_PAGE, add_audit, read_audit
from monitor.web import sessions
from monitor.web.auth import ANONYMOUS, Identity
from monitor.web.routes import Role, route, spec_for
from monitor.web.schemas import AUDIT_PAGE, int_query, num_query, str_query

bp = Blueprint("audit", __name__)

#: Filters ``GET /api/audit`` takes (exact matches).
FILTERS = ("subject", "action", "outcome", "tenant", "target")


def outcome_of(status: int) -> str:
    """``ok`` for a success, ``refused`` for 401/403/429, ``failed`` otherwise."""
    if status < 400:
        return "ok"
    return "refused" if status in (401, 403, 429) else "failed"


def _target() -> str:
    explicit = g.get("jobqueue_audit_target")
    if explicit:
        return str(explicit)
    if request.view_args:
        return "/".join(str(v) for v in request.view_args.values())
    body = request.get_json(silent=True) if request.is_json else None
    if isinstance(body, dict) and isinstance(body.get("service"), str):
        return f"service:{body['service']}"[:512]
    return ""


def record(action: str, status: int, target: str = "", detail: str = "") -> None:
    """Queue one audit entry for this request (through the writer when the app has one)."""
    identity: Identity = g.get("jobqueue_identity") or ANONYMOUS
    entry = {"at": time.time(), "subject": identity.subject[:255], "role": identity.role.value,
             "tenant": identity.tenant, "address": (request.remote_addr or "")[:64], "action": action,
             "target": target[:512], "outcome": outcome_of(status), "status": status, "detail": detail[:2000]}
    ctx = current_app.extensions["jobqueue_monitor"]
    if ctx.writer is not None:
        ctx.writer.audit(entry)
    else:  # an app without a writer (a unit test's): write it here, the same way
        with ctx.store.write() as tx:
            add_audit(tx.session, [entry])


def worth_recording(status: int) -> bool:
    """Everything an identified caller does; of anonymous callers, what they tried *with*
    credentials (a refused login, a wrong key) and not their 429s: so one address cannot write
    more entries than its login rate limit lets through, and a scan without credentials
    (401 on every control) writes none."""
    identity: Identity = g.get("jobqueue_identity") or ANONYMOUS
    if identity.logged_in or identity.kind == "local":
        return True
    if status == 429:
        return False
    if status == 401:
        return bool(request.headers.get("Authorization") or request.cookies.get(sessions.COOKIE)
                    or request.endpoint == "login.login")
    return True


def _after(response: Response) -> Response:
    spec = spec_for(current_app, request.endpoint)
    if spec is not None and spec.audit and worth_recording(response.status_code):
        try:
            record(spec.audit, response.status_code, _target(), str(g.get("jobqueue_audit_detail") or ""))
        except Exception:  # the trail must not turn a done action into an error
            current_app.logger.exception("cannot record the audit entry of %s", request.path)
    return response


def install(app: Flask) -> None:
    """Record the audited routes' calls on ``app``."""
    app.after_request(_after)


@route(bp, "/api/audit", role=Role.ADMIN, summary="The audit trail, newest first (read only)",
       query=(*[str_query(name) for name in FILTERS], num_query("since"), num_query("until"),
              int_query("limit", 1, MAX_AUDIT_PAGE), int_query("offset", 0, 10**9)),
       response=AUDIT_PAGE, errors=(400, 401, 403))
def audit_trail() -> Any:
    """``{"entries", "total", "limit", "offset"}``: filter by exact subject, action, outcome,
    tenant or target, and by time (``since``/``until``, Unix seconds)."""
    from monitor.web.api import _float_arg, _int_arg

    limit = _int_arg("limit", 100, 1, MAX_AUDIT_PAGE)
    offset = _int_arg("offset", 0, 0, 10**9)
    filters = {name: request.args[name] for name in FILTERS if request.args.get(name)}
    entries, total = read_audit(current_app.extensions["jobqueue_monitor"].store, limit=limit, offset=offset,
                                filters=filters, since=_float_arg("since"), until=_float_arg("until"))
    return jsonify({"entries": entries, "total": total, "limit": limit, "offset": offset})
