"""The services a client can submit jobs to: their names, example payloads and payload
schemas, as this install's connectors define them.

The monitor's client page and ``GET /api/services/<name>/schema`` ask here, so that nothing
outside jobqueue imports :mod:`jobqueue.connectors` (connector code loads here, on first use).
"""

from __future__ import annotations

from typing import Any

from jobqueue.connectors import CONNECTORS, connector_class
from jobqueue.errors import JobqueueError


def service_names() -> list[str]:
    """Every service a connector is registered for, sorted (whether or not its module loads)."""
    return sorted(CONNECTORS)


def _connector(service: str) -> Any:
    if service not in CONNECTORS:
        return None
    try:
        return connector_class(service)
    except (ImportError, AttributeError, JobqueueError):
        # A connector module missing on this install: the service is still listed, and a job
        # for it is refused at submit with a clear error.
        return None


def service_examples() -> dict[str, Any]:
    """Each service with its example payload (None when its connector cannot load)."""
    return {service: getattr(_connector(service), "example_payload", None) for service in service_names()}


def payload_schema(service: str) -> dict[str, Any] | None:
    """The JSON schema of ``service``'s job payload (its connector's pydantic models), or None
    when no connector for it loads here."""
    connector = _connector(service)
    return None if connector is None else dict(connector.payload_schema())
