"""Connectors by service name. Adding an image server = one module + one line here."""

from __future__ import annotations

from importlib import import_module

from jobqueue.connectors.base import Connector, Health, Job, ProgressReporter
from jobqueue.errors import UnknownServiceError

#: Service name -> "module:Class" of its connector (imported on first use).
CONNECTORS: dict[str, str] = {
    "simulation": "jobqueue.connectors.simulation:SimulationConnector",
    "comfyui": "jobqueue.connectors.comfyui.connector:ComfyUIConnector",
    "a1111": "jobqueue.connectors.a1111.connector:A1111Connector",
}


def connector_class(service: str) -> type[Connector]:
    """Return the connector class for ``service`` or raise :class:`UnknownServiceError`."""
    try:
        target = CONNECTORS[service]
    except (KeyError, TypeError):
        known = ", ".join(sorted(CONNECTORS))
        raise UnknownServiceError(f"unknown service {service!r} (known: {known})") from None
    module, _, name = target.partition(":")
    cls: type[Connector] = getattr(import_module(module), name)
    return cls


__all__ = ["CONNECTORS", "Connector", "Health", "Job", "ProgressReporter", "connector_class"]
