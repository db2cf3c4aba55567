"""Bad input gets the right 4xx with a JSON body saying what is wrong; never a 500."""

import json

import pytest
from conftest import patient_view_body as valid_body

PV = "/cds-services/lbp-patient-view"


def error_of(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    error = response.get_json()["error"]
    assert error["status"] == status and error["message"]
    return error


def fields(error):
    return {d["field"] for d in error.get("details", [])}


def test_unknown_service_is_404_naming_the_known_ones(client):
    error = error_of(client.post("/cds-services/nope", json=valid_body()), 404)
    assert "lbp-patient-view" in error["details"][0]["reason"]


def test_unknown_path_is_404_json(client):
    error_of(client.get("/nowhere"), 404)


def test_wrong_method_is_405_with_allow_header(client):
    response = client.put(PV, json=valid_body())
    error_of(response, 405)
    assert "POST" in response.headers["Allow"]


def test_get_on_a_service_is_405(client):
    error_of(client.get(PV), 405)


def test_non_json_content_type_is_415(client):
    error_of(client.post(PV, data="hook=patient-view", content_type="application/x-www-form-urlencoded"), 415)


def test_malformed_json_is_400(client):
    error = error_of(client.post(PV, data='{"hook": ', content_type="application/json"), 400)
    assert "JSON" in error["message"]


def test_empty_body_is_400(client):
    error_of(client.post(PV, data="", content_type="application/json"), 400)


def test_json_that_is_not_an_object_is_400(client):
    error_of(client.post(PV, json=[1, 2]), 400)


def test_body_over_the_configured_limit_is_413(tmp_path):
    from cds_service.app import create_app
    from cds_service.settings import load_settings

    small = create_app(load_settings(env={}, database_url="sqlite://", max_content_length=1000)).test_client()
    error_of(small.post(PV, data='{"x": "' + "a" * 2000 + '"}', content_type="application/json"), 413)


@pytest.mark.parametrize("missing", ["hook", "hookInstance", "context"])
def test_missing_required_request_field_is_400_naming_it(client, missing):
    body = valid_body()
    del body[missing]
    error = error_of(client.post(PV, json=body), 400)
    assert any(missing in d["reason"] for d in error["details"])


def test_missing_context_field_is_400_naming_it(client):
    error = error_of(client.post(PV, json=valid_body(context={"userId": "Practitioner/1"})), 400)
    assert any("patientId" in d["reason"] for d in error["details"])


def test_encounter_start_requires_encounter_id(client):
    body = valid_body(hook="encounter-start")
    error = error_of(client.post("/cds-services/lbp-encounter-start", json=body), 400)
    assert any("encounterId" in d["reason"] for d in error["details"])


def test_hook_not_matching_the_service_is_400(client):
    error = error_of(client.post(PV, json=valid_body(hook="order-sign")), 400)
    assert "hook" in fields(error)


def test_draft_orders_must_be_a_bundle(client):
    body = valid_body(hook="order-select", context={"userId": "Practitioner/1", "patientId": "p1",
                                                    "selections": [], "draftOrders": {"resourceType": "List"}})
    error = error_of(client.post("/cds-services/lbp-imaging-order-select", json=body), 400)
    assert "context.draftOrders.resourceType" in fields(error)


def test_order_select_requires_selections(client):
    body = valid_body(hook="order-select", context={"userId": "Practitioner/1", "patientId": "p1",
                                                    "draftOrders": {"resourceType": "Bundle", "entry": []}})
    error = error_of(client.post("/cds-services/lbp-imaging-order-select", json=body), 400)
    assert any("selections" in d["reason"] for d in error["details"])


def test_incomplete_fhir_authorization_is_400(client):
    body = valid_body(fhirServer="http://127.0.0.1:9/fhir", fhirAuthorization={"access_token": "x"})
    error = error_of(client.post(PV, json=body), 400)
    assert "fhirAuthorization" in fields(error)


def test_fhir_authorization_without_fhir_server_is_400(client):
    auth = {"access_token": "x", "token_type": "Bearer", "expires_in": 300, "scope": "patient/*.read",
            "subject": "svc"}
    error_of(client.post(PV, json=valid_body(fhirAuthorization=auth)), 400)


def test_patient_id_that_could_inject_a_query_is_400(client):
    body = valid_body(context={"userId": "Practitioner/1", "patientId": "p1&_has=x"})
    error_of(client.post(PV, json=body), 400)


def test_prefetch_value_that_is_not_an_object_is_400(client):
    error = error_of(client.post(PV, json=valid_body(prefetch={"patient": "Patient/p1"})), 400)
    assert "prefetch.patient" in fields(error)


def test_fhir_server_not_allowed_is_403(tmp_path):
    from cds_service.app import create_app
    from cds_service.settings import load_settings

    app = create_app(load_settings(env={}, database_url="sqlite://",
                                   fhir_allowed_servers="https://ehr.example.org/fhir"))
    body = valid_body(fhirServer="https://evil.example.com/fhir")
    error = error_of(app.test_client().post(PV, json=body), 403)
    assert "fhirServer" in fields(error)


def test_missing_patient_without_fhir_server_is_412_saying_what_is_missing(client):
    error = error_of(client.post(PV, json=valid_body(prefetch={})), 412)
    assert {"prefetch.patient", "prefetch.conditions"} <= fields(error)


def test_operation_outcome_in_required_slot_without_fhir_server_is_412(client):
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "forbidden",
                                                              "diagnostics": "access denied"}]}
    prefetch = {"patient": {"resourceType": "Patient", "id": "p1"}, "conditions": outcome}
    error = error_of(client.post(PV, json=valid_body(prefetch=prefetch)), 412)
    assert any("access denied" in d["reason"] for d in error["details"])


def test_garbage_inside_bundles_never_causes_a_500(client):
    prefetch = {"patient": {"resourceType": "Patient", "id": "p1", "birthDate": "not-a-date", "gender": 7},
                "conditions": {"resourceType": "Bundle", "entry": [None, 1, {"resource": "x"},
                               {"resource": {"resourceType": "Condition", "code": "M54.5",
                                             "clinicalStatus": [], "onsetDateTime": 12}}]},
                "observations": {"resourceType": "Bundle", "entry": [{"resource": {
                    "resourceType": "Observation", "status": "final", "code": {"coding": "x"},
                    "valueQuantity": {"value": "high", "unit": 3}}}]}}
    response = client.post(PV, json=valid_body(prefetch=prefetch))
    assert response.status_code == 200, response.get_data(as_text=True)


def test_prefetch_patient_that_is_not_the_context_patient_is_412(client):
    body = valid_body(prefetch={"patient": {"resourceType": "Patient", "id": "someone-else"}, "conditions": None})
    error = error_of(client.post(PV, json=body), 412)
    assert "prefetch.patient" in fields(error)


def test_resources_about_another_patient_are_ignored_and_reported(client):
    lbp = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
           "code": {"coding": [{"system": "http://snomed.info/sct", "code": "279039007"}]}}
    other = {"resourceType": "Condition", "id": "c2", "subject": {"reference": "Patient/p2"},
             "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "G83.4"}]}}
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": lbp}, {"resource": other}]}
    prefetch = {"patient": {"resourceType": "Patient", "id": "p1"}, "conditions": bundle, "observations": None,
                "examObservations": None, "encounters": None, "procedures": None, "medications": None,
                "activeServiceRequests": None}
    card = client.post(PV, json=valid_body(prefetch=prefetch)).get_json()["cards"][0]
    ext = card["extension"]["lbp-redflags"]
    assert ext["tier"] == "none" and ext["dataComplete"] is False
    assert "another patient" in " ".join(ext["unavailable"])


@pytest.mark.parametrize("data", ["[" * 100000 + "]" * 100000, '{"a":' * 50000 + "1" + "}" * 50000,
                                  '{"a":' * 500 + "1" + "}" * 500])
def test_deeply_nested_json_is_400(client, data):
    error_of(client.post(PV, data=data, content_type="application/json"), 400)


@pytest.mark.parametrize("data,reason", [('{"x": NaN}', "NaN"), ('{"x": -Infinity}', "Infinity")])
def test_non_standard_json_is_400(client, data, reason):
    assert reason in error_of(client.post(PV, data=data, content_type="application/json"), 400)["message"]


def test_a_duplicate_key_is_not_refused_and_its_last_value_wins(client):
    """JSON (RFC 8259) leaves duplicate names undefined; refusing them would cost a look at every object."""
    raw = json.dumps(valid_body())[:-1] + ', "hook": "order-sign"}'
    error = error_of(client.post(PV, data=raw, content_type="application/json"), 400)
    assert error["details"] == [{"field": "hook", "reason": "service 'lbp-patient-view' answers hook "
                                                             "'patient-view', not 'order-sign'"}]


def test_chunked_body_over_the_limit_is_413(service):
    import requests

    def chunks():
        for _ in range(40):
            yield b" " * (1024 * 1024)

    response = requests.post(f"{service.base_url}/cds-services/lbp-patient-view", data=chunks(),
                             headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 413


def test_a_hook_instance_with_control_characters_is_400(client):
    error = error_of(client.post(PV, json=valid_body(hookInstance="abc\ninjected line")), 400)
    assert "hookInstance" in fields(error)


def test_client_errors_are_logged_with_the_hook_instance_and_fields_only(client, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="lbp_redflags")
    error_of(client.post(PV, json=valid_body(prefetch={})), 412)
    record = next(r for r in caplog.records if r.name == "lbp_redflags.errors")
    assert "hookInstance=d1577c69-dfbe-44ad-ba6d-3e05e953b2ea" in record.getMessage()
    assert "prefetch.patient" in record.getMessage() and "p1" not in record.getMessage().split("fields=")[1]
