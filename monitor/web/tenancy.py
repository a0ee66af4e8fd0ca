"""What a tenant's caller sees: its own jobs, nothing of another tenant's (issue 24, point 5).

A caller is *confined* to a tenant when its identity (an API key made with ``--tenant``, a
login mapped to one) names a tenant and its role is below ``admin``; admins, and every identity
without a tenant, see the whole fleet. For a confined caller:

* every route with a ``<job_id>`` in its URL (the job, its timeline, preview, webhook tries,
  payload, output files, page, and the cancel/retry controls) answers **404** for a job of
  another tenant or of none -- the same answer as for an id nobody knows, so a caller cannot
  even learn that the id exists. One check here, before the view runs, for every such route of
  the URL map: a new job route cannot forget it;
* lists, counts and statistics hold only its own jobs (the views pass :func:`scope` to the
  store's reads), and so do a job's ``children`` and a canvas's tasks (:func:`own_ids`); the
  websocket sends only its own jobs' changes (:mod:`monitor.web.fanout`);
* workers and machines are shown (a tenant sees the fleet its jobs wait for) without what
  tells of other tenants' jobs: a worker's current job and its job counts are left out
  (:func:`redact_worker`);
* routes that only say something about the whole fleet (``/metrics``, queue depths, dead
  letters) and controls that act on the whole fleet (drain, resume) answer 403: they declare
  ``fleet=True`` (:data:`FLEET`).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, current_app, request

from monitor.web.access import current_identity
from monitor.web.responses import error_response
from monitor.web.routes import Role, spec_for

#: Declare a route with ``**FLEET`` (``extra={"fleet": True}``): it says something only about
#: the whole fleet, so a confined caller gets 403.
FLEET: dict[str, Any] = {"extra": {"fleet": True}}
#: Worker fields that tell of other tenants' jobs: left out (null) for a confined caller.
WORKER_JOB_FIELDS = ("current_job", "processed", "failed", "celery_processed")


def scope_of(identity: Any) -> str | None:
    """The tenant ``identity`` is confined to, or None when it sees everything (an admin, an
    identity without a tenant, or anything that is not an identity with a role)."""
    tenant = getattr(identity, "tenant", None)
    role = getattr(identity, "role", None)
    if not isinstance(tenant, str) or not tenant or not isinstance(role, Role) or role.allows(Role.ADMIN):
        return None
    return tenant


def scope() -> str | None:
    """The tenant this request's caller is confined to (None: it sees everything)."""
    return scope_of(current_identity())


def redact_worker(worker: dict[str, Any]) -> dict[str, Any]:
    """``worker`` as a confined caller sees it: without its current job and job counts."""
    return {**worker, **{name: None for name in WORKER_JOB_FIELDS}}


def redact_workers(workers: list[dict[str, Any]], tenant: str | None) -> list[dict[str, Any]]:
    """``workers`` as a caller confined to ``tenant`` sees them (as they are for None)."""
    return workers if tenant is None else [redact_worker(w) for w in workers]


def owns(tenant: str, job_id: str) -> bool:
    """True when the store holds job ``job_id`` and it belongs to ``tenant``."""
    store = current_app.extensions["jobqueue_monitor"].store
    found: bool = store.job_tenants([job_id]).get(job_id, "") == tenant
    return found


def own_ids(ids: list[str], tenant: str | None) -> list[str]:
    """Those of ``ids`` (job ids: a job's children, a canvas's tasks) a caller confined to
    ``tenant`` may see, in their order; all of them for None."""
    if tenant is None or not ids:
        return ids
    owners = current_app.extensions["jobqueue_monitor"].store.job_tenants(ids)
    return [job_id for job_id in ids if owners.get(job_id) == tenant]


def not_found(job_id: str) -> Response:
    """The answer for a job a caller may not see: exactly that of an unknown job."""
    return error_response(404, "not_found", f"no job {job_id!r}")


def _confine() -> Response | None:
    """``before_request`` (after the access check): a confined caller's request for another
    tenant's job is a 404, a fleet-wide route a 403."""
    spec = spec_for(current_app, request.endpoint)
    if spec is None or spec.role is Role.PUBLIC or spec.extra.get("authorize"):
        return None  # refused already, open to all, or /ws (confined in the fan-out)
    tenant = scope()
    if tenant is None:
        return None
    if spec.extra.get("fleet"):
        return error_response(403, "forbidden", f"this route shows or acts on the whole fleet; "
                                                f"a key of tenant {tenant!r} cannot use it")
    job_id = (request.view_args or {}).get("job_id")
    if job_id is not None and not owns(tenant, str(job_id)):
        return not_found(str(job_id))
    return None


def install(app: Flask) -> None:
    """Confine every request of ``app`` (call right after :func:`monitor.web.access.install`)."""
    app.before_request(_confine)
