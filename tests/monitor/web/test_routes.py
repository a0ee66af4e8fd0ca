"""One declaration per route: every route of the URL map declares its role, ``/api/openapi.json``
lists every route with its role, real responses validate against the document's schemas, and
docs/security.md's roles table is the declarations' (issue 24, points 2 and 10)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
from jsonschema import Draft202012Validator

from jobqueue.config import Settings
from monitor.app import create_app
from monitor.web.openapi import openapi_path, roles_table
from monitor.web.routes import RouteSpec, collect
from tests.monitor.web.test_api import seed

TOKEN = "routes-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def app(tmp_path: Path, redis_url: str) -> Any:
    application = create_app(Settings(monitor_db=f"sqlite:///{tmp_path / 'r.db'}", monitor_token=TOKEN,
                                      broker_url=redis_url).resolved())
    yield application
    application.extensions["jobqueue_monitor"].close()


def test_every_route_of_the_url_map_declares_its_role(app):
    # Given the app's URL map and its declarations
    declared = collect(app)
    # Then no rule is without a declaration, and each declaration is for its own rule and method
    undeclared = sorted(rule.rule for rule in app.url_map.iter_rules() if rule.endpoint not in declared)
    assert undeclared == []
    for rule in app.url_map.iter_rules():
        spec: RouteSpec = declared[rule.endpoint]
        assert spec.method in (rule.methods or set()), (rule.rule, spec.method)
        if not rule.endpoint.endswith("static"):
            assert spec.rule == rule.rule, (rule.rule, spec.rule)


def test_an_undeclared_route_is_refused(app):
    # Given a route added without a declaration
    app.add_url_rule("/sneaky", "sneaky", lambda: "secret")
    collect(app)
    # Then even the admin gets a 403 from it
    response = app.test_client().get("/sneaky", headers=ADMIN)
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "undeclared_route"


def test_the_document_lists_every_route_with_its_role(app):
    # Given the OpenAPI document, fetched with credentials
    doc = app.test_client().get("/api/openapi.json", headers=ADMIN).get_json()
    Draft202012Validator.check_schema({"type": "object"})
    # Then every rule and method of the URL map is in it, with the role it declares
    declared = collect(app)
    for rule in app.url_map.iter_rules():
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            op = doc["paths"][openapi_path(rule.rule)][method.lower()]
            assert op["x-role"] == declared[rule.endpoint].role.value, rule.rule
    # And what the old hand-written document left out is there now
    for path in ("/api/waiting", "/api/jobs/{job_id}/preview", "/api/jobs/{job_id}/webhooks", "/metrics",
                 "/jobs/{job_id}/files/{name}", "/api/audit", "/api/keys", "/login"):
        assert path in doc["paths"], path
    jobs = doc["paths"]["/api/jobs"]
    assert {"sort", "order"} <= {p["name"] for p in jobs["get"]["parameters"]}
    # And the submit schema takes webhook_url and requires, which the API accepts
    submit = jobs["post"]["requestBody"]["content"]["application/json"]["schema"]
    body = {"service": "simulation", "payload": {}, "webhook_url": "https://example.com/h", "requires": {"tags": ["a"]}}
    Draft202012Validator(submit).validate(body)
    # And every schema in it is a valid JSON schema
    for item in doc["paths"].values():
        for op in item.values():
            for response in op["responses"].values():
                for content in response.get("content", {}).values():
                    Draft202012Validator.check_schema(content.get("schema", {}))


def _seeded_monitor(start_monitor: Any, tmp_path: Path, redis_url: str) -> Any:
    """A real monitor process whose store holds the API tests' worker, machine and queued job
    (their finished jobs of 2023 are pruned at once)."""
    seeding = create_app(Settings(monitor_db=f"sqlite:///{tmp_path / 'monitor.db'}",
                                  broker_url=redis_url).resolved())
    seed(seeding)
    seeding.extensions["jobqueue_monitor"].close()
    return start_monitor(MONITOR_TOKEN=TOKEN, MONITOR_UNKNOWN_JOB_EXPIRY="100000")


#: Path parameters that name seeded objects.
KNOWN = {"job_id": "c", "name": "gpu0@vm1", "workflow_id": "none", "key_id": "none", "filename": "css/app.css"}


def test_real_responses_of_every_get_route_validate_against_the_document(start_monitor, tmp_path, redis_url):
    # Given a real monitor with jobs, a worker and a machine
    monitor = _seeded_monitor(start_monitor, tmp_path, redis_url)
    doc = requests.get(monitor.url + "/api/openapi.json", headers=ADMIN, timeout=10).json()
    checked = 0
    # When every GET route answering JSON is called with credentials
    for path, item in doc["paths"].items():
        op = item.get("get")
        if op is None or path == "/ws":
            continue
        url = path
        for name, value in KNOWN.items():
            url = url.replace("{" + name + "}", value)
        if path == "/api/services/{name}/schema":
            url = "/api/services/simulation/schema"
        res = requests.get(monitor.url + url, headers=ADMIN, timeout=10, allow_redirects=False)
        declared = op["responses"].get(str(res.status_code))
        # Then its status is one the document declares, and a JSON body validates against its schema
        assert declared is not None, (path, res.status_code, res.text[:200])
        schema = declared.get("content", {}).get("application/json", {}).get("schema")
        if schema is not None:
            Draft202012Validator(schema).validate(res.json())
            checked += 1
    assert checked >= 20
    # And the main reads answered 200 with data in them
    jobs = requests.get(monitor.url + "/api/jobs", headers=ADMIN, timeout=10).json()
    assert "c" in [j["id"] for j in jobs["jobs"]] and requests.get(monitor.url + "/api/workers?status=all", headers=ADMIN, timeout=10).json()["workers"]


def test_the_security_doc_has_the_declared_roles_table(app):
    # Given docs/security.md
    text = (Path(__file__).resolve().parents[3] / "docs" / "security.md").read_text()
    # Then it holds the roles × routes table generated from the declarations, as is
    assert roles_table(app) in text
