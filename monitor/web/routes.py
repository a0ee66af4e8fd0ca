"""One declaration per route: its URL, method, the role it needs, its rate limit, whether it
is audited, and its OpenAPI entry.

``@route(bp, "/api/jobs", role=Role.VIEWER, summary=..., query=..., response=...)`` registers
the Flask route *and* records a :class:`RouteSpec` on the view function. Everything else reads
these declarations: the access check (:mod:`monitor.web.access`) the role, the rate limiter
(:mod:`monitor.web.limits`) the limit, the audit trail (:mod:`monitor.web.audit`) the action,
and ``/api/openapi.json`` (:mod:`monitor.web.openapi`) the rest. A route without a declaration
is refused (403) and fails ``tests/monitor/web/test_routes.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

from flask import Flask

F = TypeVar("F", bound=Callable[..., Any])

#: Attribute of a view function that holds its declaration.
SPEC_ATTR = "jobqueue_route"
#: Where an app keeps its endpoint → declaration table.
EXTENSION = "jobqueue_routes"


class Role(str, Enum):
    """Who may call a route, weakest first: ``public`` needs no login at all."""

    PUBLIC = "public"
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def allows(self, needed: Role) -> bool:
        """True when this role may call a route that needs ``needed``."""
        return self.rank >= needed.rank


_RANKS = {Role.PUBLIC: 0, Role.VIEWER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}


class Limit(str, Enum):
    """The rate limits a route can be under (their values are settings, see :mod:`monitor.web.limits`)."""

    SUBMIT = "submit"
    CONTROL = "control"
    LOGIN = "login"


@dataclass(frozen=True)
class RouteSpec:
    """A route's declaration. ``response`` is the JSON schema of its success body (None: not
    JSON, see ``content``); ``query`` the OpenAPI query parameters; ``body`` the JSON schema of
    its request body; ``audit`` the action name its calls are audited under; ``page`` marks an
    HTML page (an unauthenticated visitor is sent to the login page); ``scrape`` a route the
    metrics token opens; ``control`` one that read-only mode refuses."""

    rule: str
    method: str
    role: Role
    summary: str
    query: tuple[dict[str, Any], ...] = ()
    body: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    content: str = "application/json"
    limit: Limit | None = None
    audit: str | None = None
    page: bool = False
    scrape: bool = False
    control: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def route(target: Any, rule: str, *, method: str = "GET", role: Role, summary: str, **options: Any) -> Callable[[F], F]:
    """Register ``rule`` on ``target`` (a blueprint or app) and declare it (:class:`RouteSpec`)."""

    def register(view: F) -> F:
        declare(view, rule, method=method, role=role, summary=summary, **options)
        target.add_url_rule(rule, view_func=view, methods=[method])
        return view

    return register


def declare(view: F, rule: str, *, method: str = "GET", role: Role, summary: str, **options: Any) -> F:
    """Declare a view that something else registers (the websocket route)."""
    setattr(view, SPEC_ATTR, RouteSpec(rule=rule, method=method, role=role, summary=summary, **options))
    return view


#: Static files (scripts, styles): public, so the login page can load them.
STATIC = RouteSpec(rule="/static/<path:filename>", method="GET", role=Role.PUBLIC,
                   summary="The pages' scripts and styles", content="application/octet-stream", errors=(404,))


def collect(app: Flask) -> dict[str, RouteSpec]:
    """Build (once the routes are registered) and keep the app's endpoint → declaration table.
    Flask's own static endpoints get :data:`STATIC`; an endpoint without a declaration is left
    out, so it is refused."""
    table: dict[str, RouteSpec] = {}
    for endpoint, view in app.view_functions.items():
        spec = getattr(view, SPEC_ATTR, None)
        if isinstance(spec, RouteSpec):
            table[endpoint] = spec
        elif endpoint == "static" or endpoint.endswith(".static"):
            table[endpoint] = STATIC
    app.extensions[EXTENSION] = table
    return table


def spec_for(app: Flask, endpoint: str | None) -> RouteSpec | None:
    """The declaration of ``endpoint`` in ``app`` (None: undeclared or no endpoint)."""
    if endpoint is None:
        return None
    table: dict[str, RouteSpec] = app.extensions.get(EXTENSION) or collect(app)
    return table.get(endpoint)
