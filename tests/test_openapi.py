"""GET /openapi.json: an OpenAPI 3.1 document built from the schemas the service validates with."""

import json

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from cds_service.app import create_app
from cds_service.services import SERVICES
from cds_service.settings import load_settings
from cds_service.validation import validator

ERROR_STATUSES = {"400", "401", "403", "404", "405", "412", "413", "415", "429"}


@pytest.fixture
def document(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.is_json
    return response.get_json()


def refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def resolve(document, ref):
    assert ref.startswith("#/"), ref
    node = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def test_it_is_openapi_3_1_with_discovery_the_four_hooks_feedback_and_health(document):
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == {"/cds-services", *(f"/cds-services/{s}" for s in SERVICES),
                                      "/cds-services/{service_id}/feedback", "/healthz", "/readyz", "/openapi.json"}


def test_every_reference_resolves_inside_the_document(document):
    for ref in set(refs(document)):
        assert resolve(document, ref) is not None


def test_every_error_status_is_documented_with_the_error_schema(document):
    responses = document["components"]["responses"]
    assert ERROR_STATUSES <= set(responses)
    for status in ERROR_STATUSES:
        assert responses[status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/error"}
    assert responses["429"]["headers"]["Retry-After"]["required"] is True
    for service_id in SERVICES:
        documented = set(document["paths"][f"/cds-services/{service_id}"]["post"]["responses"])
        assert {"200", "400", "403", "412", "413", "415", "429"} <= documented


def test_the_request_schemas_are_the_ones_requests_are_validated_with(document):
    schemas = document["components"]["schemas"]
    for name in ("request", "response", "feedback", "discovery", "context.order-sign"):
        assert schemas[name]["title"] == validator(name).schema["title"]
    order_sign = document["paths"]["/cds-services/lbp-imaging-order-sign"]["post"]["requestBody"]
    hook_part = order_sign["content"]["application/json"]["schema"]["allOf"][1]["properties"]
    assert hook_part == {"hook": {"const": "order-sign"},
                         "context": {"$ref": "#/components/schemas/context.order-sign"}}


def document_validator(document, schema: dict) -> Draft202012Validator:
    """A validator for a schema written inside the document (its $refs point into the document)."""
    registry = Registry().with_resource("urn:openapi", DRAFT202012.create_resource({**document, "x-checked": schema}))
    return Draft202012Validator({"$ref": "urn:openapi#/x-checked"}, registry=registry)


@pytest.mark.parametrize("service_id", list(SERVICES))
def test_each_hook_has_an_example_request_that_the_service_answers_as_documented(client, document, service_id):
    operation = document["paths"][f"/cds-services/{service_id}"]["post"]
    media = operation["requestBody"]["content"]["application/json"]
    example = media["examples"]["example-patient"]["value"]
    assert not list(document_validator(document, media["schema"]).iter_errors(example))
    response = client.post(f"/cds-services/{service_id}", json=example)
    assert response.status_code == 200, response.get_data(as_text=True)
    response_check = document_validator(document, {"$ref": "#/components/schemas/response"})
    assert not list(response_check.iter_errors(response.get_json()))


def test_error_responses_match_the_documented_error_schema(client, document):
    check = document_validator(document, {"$ref": "#/components/schemas/error"})
    assert not check.is_valid({"error": {"status": 400}})  # the check can fail
    for response in (client.post("/cds-services/lbp-patient-view", data="{", content_type="application/json"),
                     client.get("/nowhere"), client.put("/healthz")):
        assert response.status_code >= 400
        assert not list(check.iter_errors(response.get_json())), response.get_json()


def test_security_is_declared_only_when_authentication_is_required(tmp_path, document):
    assert "security" not in document
    settings = load_settings(env={}, database_url=f"sqlite:///{tmp_path / 'db'}", auth_required=True,
                             public_base_url="https://cds.example.org")
    secured = create_app(settings).test_client().get("/openapi.json").get_json()
    assert secured["security"] == [{"cdsClientJwt": []}]
    assert secured["servers"] == [{"url": "https://cds.example.org"}]
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert secured["paths"][path]["get"]["security"] == []


def test_the_document_is_plain_json(document):
    json.dumps(document)
