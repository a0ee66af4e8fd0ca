"""A tenant's job may take as input images only the outputs of its own tenant's jobs.

A ComfyUI payload's ``images`` may name an earlier job's output (``job:<id>/<file>`` or an
output-store URL); the worker reads it from the output store whoever asks. So the client checks,
at submit, that every job so named belongs to the submitter's tenant (its ``options["tenant"]``
in the result backend's record, which holds a job's real kwargs); a submitter without a tenant
(an admin, a fleet-wide key) may name any job. The refusal is the same for a job of another
tenant and for a job nobody knows, so it tells nothing of other tenants.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from jobqueue.connectors.comfyui.inputs import InputImageError, is_placeholder, parse_entry
from jobqueue.connectors.comfyui.uploads import store_file_of
from jobqueue.errors import SubmitError
from jobqueue.shared.outputs import OutputStore


def referenced_jobs(payload: Mapping[str, Any], store: OutputStore | None) -> Iterator[str]:
    """The ids of the jobs whose outputs ``payload``'s input images name."""
    images = payload.get("images")
    if not isinstance(images, Mapping):
        return
    for name, value in images.items():
        if is_placeholder(value):
            continue  # a workflow step's previous output: the same workflow, the same tenant
        for source in parse_entry(str(name), value):
            if source is None:
                continue
            if source.kind == "job":
                yield source.job[0]
            elif source.kind == "store" and store is not None:
                try:
                    yield store_file_of(store, source.ref)[0]
                except InputImageError:
                    continue  # not this store's file: the worker refuses it


def owner_of(app: Any, job_id: str) -> str | None:
    """The tenant of ``job_id`` as its result-backend record says (None: no tenant, or unknown)."""
    meta = app.backend.get_task_meta(job_id) or {}
    kwargs = meta.get("kwargs")
    options = kwargs.get("options") if isinstance(kwargs, dict) else None
    tenant = options.get("tenant") if isinstance(options, dict) else None
    return tenant if isinstance(tenant, str) else None


def check_input_owners(app: Any, service: str, payload: Mapping[str, Any], tenant: str | None) -> None:
    """Raise :class:`SubmitError` when a job of ``tenant`` names another tenant's (or an unknown)
    job's output as an input image."""
    if tenant is None or service != "comfyui" or not isinstance(payload.get("images"), Mapping):
        return
    try:
        store: OutputStore | None = OutputStore.from_settings(app.settings)
    except Exception:  # no output store configured here: job: references are checked all the same
        store = None
    for job_id in referenced_jobs(payload, store):
        if owner_of(app, job_id) != tenant:
            raise SubmitError(f"images: job {job_id} is not a job of tenant {tenant!r} with outputs")
