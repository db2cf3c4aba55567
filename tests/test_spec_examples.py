"""Conformance: the official CDS Hooks examples and the sandbox's captured requests get spec-valid answers."""

import copy
import uuid

import pytest
from conftest import fixture_json

from cds_service.validation import problems

LIBRARY = "cds-hooks-spec/hl7-cds-hooks-library-1.0.1"
CAPTURED = "cds-hooks-spec/cds-hooks-sandbox/captured"
SERVICE_FOR_HOOK = {"patient-view": "lbp-patient-view", "encounter-start": "lbp-encounter-start",
                    "order-select": "lbp-imaging-order-select", "order-sign": "lbp-imaging-order-sign"}
NO_LBP_PREFETCH = {"patient": {"resourceType": "Patient", "id": "x", "birthDate": "1980-01-01"},
                   "conditions": None, "observations": None, "examObservations": None,
                   "encounters": None, "procedures": None, "medications": None,
                   "activeServiceRequests": None}


def assert_valid_response(response):
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert problems("response", body) == []
    return body


def test_the_response_schema_accepts_the_spec_response_example():
    assert problems("response", fixture_json("cds-hooks-spec/hl7-cds-hooks-2.0.1/examples/response-cards.json")) == []


def test_the_response_schema_rejects_a_null_optional_field():
    card = {"summary": "x", "indicator": "info", "source": {"label": "x"}, "detail": None}
    assert problems("response", {"cards": [card]})


def test_the_response_schema_rejects_a_summary_of_140_characters():
    card = {"summary": "x" * 140, "indicator": "info", "source": {"label": "x"}}
    assert problems("response", {"cards": [card]})


@pytest.mark.parametrize("example", [
    "patient-view/example-context-minimal.json", "patient-view/example-context-with-encounter.json",
    "encounter-start/example-context.json", "order-select/example-R4.json", "order-sign/example-R4.json"])
def test_hook_library_examples_are_accepted_and_answered(client, example):
    hook = example.split("/")[0]
    body = {"hook": hook, "hookInstance": str(uuid.uuid4()), **fixture_json(f"{LIBRARY}/{example}"),
            "prefetch": copy.deepcopy(NO_LBP_PREFETCH)}
    body["prefetch"]["patient"]["id"] = body["context"]["patientId"]
    result = assert_valid_response(client.post(f"/cds-services/{SERVICE_FOR_HOOK[hook]}", json=body))
    assert result["cards"] == []  # no low back pain, and the example orders are not lumbar imaging


def test_hook_library_example_without_prefetch_or_fhir_server_is_412(client):
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            **fixture_json(f"{LIBRARY}/patient-view/example-context-minimal.json")}
    response = client.post("/cds-services/lbp-patient-view", json=body)
    assert response.status_code == 412


def test_spec_patient_view_request_to_a_server_not_allowed_is_403(client):
    body = fixture_json("cds-hooks-spec/hl7-cds-hooks-2.0.1/examples/request-patient-view.json")
    response = client.post("/cds-services/lbp-patient-view", json=body)
    assert response.status_code == 403  # hooks.smarthealthit.org is not on the allow-list


def test_captured_sandbox_patient_view_gets_an_imaging_card(client):
    capture = fixture_json(f"{CAPTURED}/patient-view.json")
    body = assert_valid_response(client.post(capture["path"], json=capture["body"]))
    card = body["cards"][0]
    ext = card["extension"]["lbp-redflags"]
    assert ext["tier"] == "imaging"
    assert {"cancer-history", "age-50-plus", "elevated-psa"} <= set(ext["redFlags"])
    assert card["indicator"] == "warning"


def test_captured_sandbox_order_select_rates_the_mri_in_both_places(client):
    capture = fixture_json(f"{CAPTURED}/order-select-pama.json")
    body = assert_valid_response(client.post(capture["path"], json=capture["body"]))
    assert body["systemActions"] == body["extension"]["systemActions"]
    action = body["systemActions"][0]
    assert action["type"] == "update" and action["description"]
    ratings = [e for e in action["resource"]["extension"] if e["url"] == "http://fhir.org/argonaut/Extension/pama-rating"]
    assert ratings[0]["valueCodeableConcept"]["coding"][0]["code"] == "appropriate"


def test_captured_sandbox_empty_draft_order_is_harmless(client):
    capture = fixture_json(f"{CAPTURED}/order-select-pama-empty-draft.json")
    body = assert_valid_response(client.post(capture["path"], json=capture["body"]))
    assert body["cards"] == []


def test_argonaut_pama_request_rates_the_ct_order(client):
    body = fixture_json("cds-hooks-spec/argonaut-cds-hooks-for-pama/examples/scenario-01-outbound-request.json")
    del body["fhirServer"]
    body["prefetch"] = copy.deepcopy(NO_LBP_PREFETCH)
    body["prefetch"]["patient"]["id"] = body["context"]["patientId"]
    result = assert_valid_response(client.post("/cds-services/lbp-imaging-order-select", json=body))
    card = result["cards"][0]
    assert card["extension"]["lbp-redflags"]["tier"] == "none"
    assert result["extension"]["systemActions"][0]["resource"]["id"] == "example-MRI-59879846"


def test_retried_hook_instance_gets_the_same_card_uuids(client):
    capture = fixture_json(f"{CAPTURED}/patient-view.json")
    first = client.post(capture["path"], json=capture["body"]).get_json()
    again = client.post(capture["path"], json=capture["body"]).get_json()
    assert first == again
    assert first["cards"][0]["uuid"]


def test_readme_example_request_gets_the_documented_answer(client):
    import json
    from pathlib import Path

    examples = Path(__file__).parent.parent / "examples"
    request = json.loads((examples / "request-patient-view.json").read_text())
    documented = json.loads((examples / "response-patient-view.json").read_text())
    answer = assert_valid_response(client.post("/cds-services/lbp-patient-view", json=request))
    assert [c["summary"] for c in answer["cards"]] == [c["summary"] for c in documented["cards"]]
    assert answer["cards"][0]["extension"]["lbp-redflags"]["tier"] == "emergency"


def test_spec_delete_action_example_is_a_valid_action():
    action = fixture_json("cds-hooks-spec/hl7-cds-hooks-2.0.1/examples/action-delete.json")
    card = {"summary": "x", "indicator": "info", "source": {"label": "x"}, "selectionBehavior": "any",
            "suggestions": [{"label": "remove", "actions": [action]}]}
    assert problems("response", {"cards": [card]}) == []
