"""GET /api/services/<name>/schema: each connector's payload schema for the client page."""

from __future__ import annotations

from jobqueue.connectors import connector_class


def test_a_services_payload_schema_is_its_connectors_pydantic_schema(client):
    # When the client page asks for the simulation service's payload schema
    response = client.get("/api/services/simulation/schema")
    # Then it gets the connector's schema: fields, types, ranges, no unknown fields
    assert response.status_code == 200
    schema = response.get_json()
    assert schema == connector_class("simulation").payload_schema()
    assert schema["properties"]["steps"]["type"] == "integer"
    assert schema["additionalProperties"] is False


def test_the_a1111_schema_offers_one_branch_per_mode(client):
    schema = client.get("/api/services/a1111/schema").get_json()
    assert [b["properties"]["mode"]["const"] for b in schema["oneOf"]] == ["txt2img", "img2img"]


def test_a_service_without_a_connector_gets_a_json_404(client):
    response = client.get("/api/services/no-such-service/schema")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"
    assert "no-such-service" in response.get_json()["error"]["message"]


def test_the_schema_endpoint_is_in_the_openapi_document(client):
    paths = client.get("/api/openapi.json").get_json()["paths"]
    assert "/api/services/{name}/schema" in paths
