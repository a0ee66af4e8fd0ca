"""API fuzz: 5,000+ generated requests against every operation of /api/openapi.json, on an
app with a real Redis broker and a store holding hostile numbers. No 5xx, and every JSON
response is strict."""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from jobqueue.config import Settings
from monitor.app import create_app
from monitor.merge.apply import apply
from tests.monitor.hostile_data import plant, seed_events, strict_json
from tests.monitor.web import sso_providers

provider = sso_providers.provider

#: Requests the fuzz sends in all (the acceptance asks for at least 5,000), in batches: one
#: hypothesis example sends :data:`BATCH` requests, which spreads its per-example cost.
REQUESTS = int(os.environ.get("JOBQUEUE_FUZZ_REQUESTS", "5200"))
BATCH = 10
TOKEN = "fuzz-token"
T0 = 1_700_000_000.0

#: Identifiers worth trying besides random text: known ids, traversal, encodings, huge.
IDS = ["h1", "h2", "h3", "h4", "nope", ".", "..", "%2e", "%2e%2e", "a/../b", "x" * 300, "\u202e", "<script>", "%00",
       "null", "1e308"]
#: Numbers that broke monitors before.
NUMBERS = ["nan", "NaN", "inf", "-inf", "Infinity", "1e308", "-1e308", "1e18", "-1", "0", "99999999999999999999",
           "0x10", "", " "]


#: JSON values of every type, hostile ones included (cheaper to draw than st.recursive).
VALUES: list[Any] = [None, True, 0, -1, 2**63, 1e308, -1e308, 1.5, "", "x" * 300, "<script>", [], [1, "a"], {},
                     {"steps": "many"}, {"a": {"b": [None]}}, [[[[]]]], "NaN", "\u0000"]


def _json_values() -> st.SearchStrategy[Any]:
    leaves = st.one_of(st.sampled_from(VALUES), st.integers(), st.text(max_size=12))
    return st.one_of(leaves, st.lists(leaves, max_size=3), st.dictionaries(st.text(max_size=6), leaves, max_size=3))


def _submit_bodies() -> st.SearchStrategy[Any]:
    hostile = st.one_of(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e308", "1e400"]).map(lambda s: ("raw", s)),
                        _json_values().map(lambda v: ("value", v)))
    fields = st.fixed_dictionaries({"service": st.sampled_from(["simulation", "comfyui", "nope", ""])},
                                   optional={"payload": st.one_of(st.just({"steps": 1}), _json_values()),
                                             "count": st.one_of(st.integers(1, 2), _json_values()),
                                             "priority": hostile, "timeout": hostile, "queue": st.text(max_size=10),
                                             "step": hostile, "workflow_id": st.text(max_size=10), "extra": st.none()})

    def render(body: dict[str, Any]) -> str:
        parts = []
        for key, value in body.items():
            if isinstance(value, tuple):
                rendered = value[1] if value[0] == "raw" else json.dumps(value[1])
            else:
                rendered = json.dumps(value)
            parts.append(f"{json.dumps(key)}: {rendered}")
        return "{" + ", ".join(parts) + "}"

    return fields.map(render)


def _bodies(operation: str) -> st.SearchStrategy[bytes | None]:
    raw = st.one_of(
        st.none(),
        st.just(b""),
        st.binary(max_size=64),
        st.integers(1, 60_000).map(lambda n: b"[" * n + b"]" * n),
        st.integers(1, 60_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
        _json_values().map(lambda v: json.dumps(v).encode()),
        st.sampled_from([b"NaN", b"[Infinity]", b'{"count": NaN}', b"{", b"\xff\xfe", b"x" * 1_100_000]),
    )
    if operation == "submit":
        return st.one_of(raw, _submit_bodies().map(str.encode))
    return raw


@st.composite
def requests_(draw: Any, doc: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
    operations = [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()]
    path, method, op = draw(st.sampled_from(operations))
    url = path
    for param in op.get("parameters", []):
        if param["in"] == "path":
            value = draw(st.one_of(st.sampled_from(IDS), st.text(min_size=1, max_size=30)))
            url = url.replace("{" + param["name"] + "}", quote(value, safe="") or "x")
    query: list[tuple[str, str]] = []
    for param in op.get("parameters", []):
        if param["in"] == "query" and draw(st.booleans()):
            query.append((param["name"], draw(st.one_of(st.sampled_from(NUMBERS), st.text(max_size=20)))))
    if draw(st.integers(0, 9)) == 0:
        query.append((draw(st.text(min_size=1, max_size=8)), draw(st.text(max_size=8))))
    if query:
        url += "?" + urlencode(query)
    headers = {}
    content_type = draw(st.sampled_from([None, "application/json", "application/json; charset=utf-8", "text/plain",
                                         "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]))
    if content_type:
        headers["Content-Type"] = content_type
    origin = draw(st.sampled_from([None, None, "http://localhost", "http://evil.example", "null", "garbage://"]))
    if origin:
        headers["Origin"] = origin
    auth = draw(st.sampled_from([None, f"Bearer {TOKEN}", f"Bearer {TOKEN}", f"Bearer {keys['viewer']}",
                                 f"Bearer {keys['operator']}", f"Bearer {keys['revoked']}", "Bearer wrong",
                                 "Basic !!!", "Weird"]))
    if auth:
        headers["Authorization"] = auth
    body = draw(_bodies("submit" if path == "/api/jobs" and method == "post" else "other")) if method == "post" else None
    return {"method": method.upper(), "url": url, "headers": headers, "body": body}


@pytest.fixture
def fuzz_app(settings: Settings, tmp_path: Any, provider: Any) -> Any:
    # Single sign-on through a live OIDC provider, so its routes are fuzzed past "not configured"
    fuzz_settings = Settings(broker_url=settings.broker_url, result_backend=settings.result_backend,
                             monitor_db=f"sqlite:///{tmp_path / 'fuzz.db'}", monitor_token=TOKEN,
                             output_dir=str(tmp_path / "outputs"), monitor_sso_provider="oidc",
                             monitor_sso_url=provider.url, monitor_sso_client_id="fuzz", monitor_sso_client_secret="s",
                             monitor_sso_allowed_domains=("acme.test",)).resolved()
    application = create_app(fuzz_settings)
    store = application.extensions["jobqueue_monitor"].store
    with store.write() as tx:
        for event in seed_events(T0):
            apply(event, tx)
    plant(fuzz_settings.monitor_db)
    from monitor.store.access import create_key, revoke_key

    keys = {}
    for role in ("viewer", "operator", "revoked"):
        keys[role], info = create_key(store, "operator" if role == "revoked" else role)
    revoke_key(store, info["id"])
    application.config["FUZZ_KEYS"] = keys
    yield application
    application.extensions["jobqueue_monitor"].close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the mock OIDC provider's Authlib use
@pytest.mark.timeout(600, method="thread")  # 5,200 requests: ~2.5 min on a busy machine; a hang still ends
def test_thousands_of_generated_requests_get_no_5xx_and_only_strict_json(fuzz_app):
    # Given the monitor's own description of its API, and an app on a store with hostile numbers
    client = fuzz_app.test_client()
    doc = strict_json(client.get("/api/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).data)
    assert doc["openapi"].startswith("3.") and len(doc["paths"]) >= 15
    statuses: Counter[int] = Counter()
    failures: list[str] = []

    # When thousands of generated requests hit every operation
    @settings(max_examples=-(-REQUESTS // BATCH), deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.lists(requests_(doc, fuzz_app.config["FUZZ_KEYS"]), min_size=BATCH, max_size=BATCH))
    def batch(reqs: list[dict[str, Any]]) -> None:
        for req in reqs:
            response = client.open(req["url"], method=req["method"], headers=req["headers"], data=req["body"])
            statuses[response.status_code] += 1
            # Then none is a server error, and every JSON answer parses strictly
            if response.status_code >= 500:
                failures.append(f"{req['method']} {req['url'][:200]} -> {response.status_code}: {response.data[:300]!r}")
            if response.mimetype == "application/json":
                try:
                    strict_json(response.data)
                except ValueError as exc:
                    failures.append(f"{req['method']} {req['url'][:200]}: not strict JSON ({exc})")

    batch()
    assert sum(statuses.values()) >= min(REQUESTS, 5000), statuses
    assert failures == [], failures[:10]
    # And the fuzz reached past the front door, not just 4xx everywhere
    assert statuses[200] > REQUESTS // 10 and statuses[404] > REQUESTS // 100 and statuses[403] > REQUESTS // 100, statuses
