"""The jobqueue monitor: collector → store → REST API / websocket → dashboard.

``create_app`` builds the Flask app; ``monitor.server.serve`` runs it with the event
collector, the single writer and truth repair. See docs/api.md.
"""

from __future__ import annotations

from monitor.app import create_app

__all__ = ["create_app"]
