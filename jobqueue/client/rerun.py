"""Re-run a job as it was submitted: the same service, payload and every submit option.

A retry (of a failed job) or a re-run (of any job) from the monitor must not quietly drop what
the first submit asked for: without its ``requires`` the copy may land on a worker without its
model, without its ``webhook_url`` the application never hears of it. So the copy is built from
the task's own kwargs (what the result backend kept), option by option, and every option this
module does not know is carried over as metadata too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobqueue.shared.fairshare import split_tenant_queue

#: Options :func:`jobqueue.client.jobs.submit_job` takes as its own arguments.
ARGUMENTS = ("priority", "queue", "timeout", "workflow_id", "step", "requires", "webhook_url", "tenant")
#: Options the new submit sets itself (or that belong to the first job only): never copied.
#: A copy is its own job, not one more member of the batch the first job was in.
NOT_COPIED = frozenset({"service", "submitted_at", "retry_of", "batch_id", "batch_index", "batch_size"})


def resubmit_arguments(job_id: str, kwargs: Mapping[str, Any], service: str) -> dict[str, Any]:
    """The :func:`~jobqueue.client.jobs.submit_job` keyword arguments that submit job
    ``job_id`` again from its task ``kwargs`` (``service``, ``payload``, ``options``).

    Kept: the payload as submitted (input images, once jobs take them, travel in it), priority,
    the queue it went to (a pin stays a pin), timeout, workflow id and step, ``requires``,
    ``webhook_url``, the tenant (the copy belongs to whom the first job did), and any other
    option as metadata. A job that went to its tenant's queue (:mod:`jobqueue.shared.fairshare`)
    is routed again rather than pinned there.
    The copy records ``retry_of``: the job it copies.
    """
    options = dict(kwargs.get("options") or {})
    arguments: dict[str, Any] = {name: options.get(name) for name in ARGUMENTS}
    if isinstance(arguments["queue"], str) and split_tenant_queue(arguments["queue"])[0] is not None:
        arguments["queue"] = None
    extra = {key: value for key, value in options.items() if key not in ARGUMENTS and key not in NOT_COPIED}
    extra["retry_of"] = job_id
    return {"service": kwargs.get("service") or service, "payload": kwargs["payload"], **arguments,
            "extra": extra}
