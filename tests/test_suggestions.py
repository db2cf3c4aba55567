"""cards.suggestions: FHIR R4 ServiceRequests and CDS Hooks actions for suggestions."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
from fhir.resources.R4B.servicerequest import ServiceRequest

from cards.rating import rate
from cards.suggestions import (
    delete_order_action,
    escalate_order_action,
    replace_order_actions,
    service_request,
)
from fhir_mappings.orders import ImagingOrder, lumbar_imaging_orders, orderable, orderable_ids

ROOT = Path(__file__).parent.parent
ARGONAUT = Path(__file__).parent / "fixtures" / "cds-hooks-spec" / "argonaut-cds-hooks-for-pama" / "examples"
RESPONSE_SCHEMA = ROOT / "cds_service" / "schemas" / "response.schema.json"
CPT = "http://www.ama-assn.org/go/cpt"
CONSULT_ID = "55f3b7fc-9955-420e-a460-ff284b2956e6"


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def reparsed(resource: dict) -> dict:
    """Validate with the R4B model again and return its JSON form."""
    return ServiceRequest.model_validate(resource).model_dump(mode="json", exclude_none=True)


def argonaut_order() -> ImagingOrder:
    request = load(ARGONAUT / "scenario-01-outbound-request.json")
    (order,) = lumbar_imaging_orders(request["context"]["draftOrders"])
    return order


def draft(**extra) -> ImagingOrder:
    resource = {
        "resourceType": "ServiceRequest",
        "id": "sr1",
        "status": "draft",
        "intent": "plan",
        "code": {"coding": [{"system": CPT, "code": "72100"}], "text": "XR L-spine"},
        "subject": {"reference": "Patient/p1"},
    }
    resource.update(extra)
    (order,) = lumbar_imaging_orders({"resourceType": "Bundle", "entry": [{"resource": resource}]})
    return order


def assert_valid_actions(actions: list[dict]) -> None:
    """The actions fit the project's CDS Hooks 2.0 response schema."""
    jsonschema.validate({"cards": [], "systemActions": actions}, load(RESPONSE_SCHEMA))


# --- service_request


@pytest.mark.parametrize("orderable_id", orderable_ids())
def test_every_orderable_gives_a_valid_draft_proposal(orderable_id):
    resource = service_request(orderable_id, patient_id="p1")
    assert reparsed(resource) == resource
    entry = orderable(orderable_id)
    assert resource["resourceType"] == "ServiceRequest"
    assert (resource["status"], resource["intent"], resource["priority"]) == ("draft", "proposal", "routine")
    assert resource["subject"] == {"reference": "Patient/p1"}
    assert resource["code"]["text"] == entry["display"]
    expected = [(c["system"], c["code"]) for c in entry["codes"] if c.get("suggest")]
    assert [(c["system"], c["code"]) for c in resource["code"]["coding"]] == expected
    for coding in resource["code"]["coding"]:
        if coding["system"] == CPT:
            assert "display" not in coding
    assert resource["category"][0]["coding"][0]["system"] == "http://snomed.info/sct"
    for absent in ("encounter", "reasonReference", "reasonCode", "note", "id"):
        assert absent not in resource


def test_reasons_encounter_priority_and_note_are_set():
    resource = service_request(
        "mri-lumbar-without-with",
        patient_id="Patient/p1",
        encounter_id="enc1",
        reasons=["Condition/c2", "Observation/o1", "Condition/c2"],
        priority="urgent",
        note="Known prostate cancer; new back pain.",
        request_id="suggested-mri-1",
    )
    assert reparsed(resource) == resource
    assert resource["id"] == "suggested-mri-1"
    assert resource["subject"] == {"reference": "Patient/p1"}
    assert resource["encounter"] == {"reference": "Encounter/enc1"}
    assert resource["reasonReference"] == [{"reference": "Condition/c2"}, {"reference": "Observation/o1"}]
    assert resource["priority"] == "urgent"
    assert resource["note"] == [{"text": "Known prostate cancer; new back pain."}]
    assert [c["code"] for c in resource["code"]["coding"]] == ["72158", "24967-2", "RPID500"]


@pytest.mark.parametrize("priority", ["routine", "urgent", "asap", "stat"])
def test_every_priority(priority):
    assert service_request("referral-emergency", patient_id="p1", priority=priority)["priority"] == priority


def test_reason_codes_are_carried():
    lbp = {"coding": [{"system": "http://snomed.info/sct", "code": "279039007", "display": "Low back pain"}]}
    resource = service_request("lab-esr", patient_id="p1", reason_codes=[lbp])
    assert resource["reasonCode"] == [lbp]
    assert reparsed(resource) == resource


@pytest.mark.parametrize(
    ("orderable_id", "kwargs"),
    [
        ("no-such-study", {}),
        ("xr-lumbar", {"priority": "soon"}),
        ("xr-lumbar", {"patient_id": "Patient/"}),
        ("xr-lumbar", {"patient_id": "p 1"}),
        ("xr-lumbar", {"encounter_id": "Encounter/with space"}),
        ("xr-lumbar", {"reasons": ["c2"]}),
        ("xr-lumbar", {"reasons": ["Patient/p1"]}),
        ("xr-lumbar", {"reasons": ["Condition/"]}),
        ("xr-lumbar", {"request_id": "has space"}),
    ],
)
def test_bad_arguments_raise_value_error(orderable_id, kwargs):
    arguments = {"patient_id": "p1", **kwargs}
    with pytest.raises(ValueError):
        service_request(orderable_id, **arguments)


def test_referral_and_lab_categories():
    referral = service_request("referral-mscc", patient_id="p1", priority="stat")
    lab = service_request("lab-cbc", patient_id="p1")
    assert referral["category"][0]["coding"][0]["code"] == "3457005"
    assert referral["code"]["coding"] == [
        {"system": "http://snomed.info/sct", "code": "310515004", "display": "Referral to medical oncologist"}
    ]
    assert lab["category"][0]["coding"][0]["code"] == "108252007"
    assert lab["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "58410-2",
        "display": "CBC panel - Blood by Automated count",
    }


# --- replace


def test_replace_deletes_the_draft_then_creates_the_new_order():
    order = argonaut_order()
    before = copy.deepcopy(order.resource)
    actions = replace_order_actions(
        order, "mri-lumbar-without-with", reasons=["Condition/c2"], priority="urgent", note="Cancer red flags"
    )
    assert [a["type"] for a in actions] == ["delete", "create"]
    delete, create = actions
    assert delete["resourceId"] == "ServiceRequest/example-MRI-59879846"
    assert "resource" not in delete
    assert delete["description"] and create["description"]
    new = create["resource"]
    assert reparsed(new) == new
    assert new["subject"] == order.resource["subject"]
    assert new["reasonCode"] == order.resource["reasonCode"]
    assert new["reasonReference"] == [{"reference": "Condition/c2"}]
    assert new["priority"] == "urgent"
    assert new["note"] == [{"text": "Cancer red flags"}]
    assert new["code"]["coding"][0] == {"system": CPT, "code": "72158"}
    assert order.resource == before
    assert_valid_actions(actions)


def test_replace_keeps_the_draft_encounter_reasons_and_priority():
    order = draft(
        encounter={"reference": "Encounter/e9"},
        priority="asap",
        reasonReference=[{"reference": "Condition/c1"}, {"reference": "Practitioner/x"}, "junk"],
    )
    _, create = replace_order_actions(order, "mri-lumbar-without", reasons=["Observation/o1"])
    new = create["resource"]
    assert new["encounter"] == {"reference": "Encounter/e9"}
    assert new["priority"] == "asap"
    assert new["reasonReference"] == [{"reference": "Condition/c1"}, {"reference": "Observation/o1"}]


def test_replace_without_a_draft_id_only_creates():
    order = draft()
    anonymous = ImagingOrder(
        reference="",
        resource={k: v for k, v in order.resource.items() if k != "id"},
        modality=order.modality,
        orderable=order.orderable,
    )
    actions = replace_order_actions(anonymous, "mri-whole-spine-without-with", priority="stat")
    assert [a["type"] for a in actions] == ["create"]
    with pytest.raises(ValueError):
        delete_order_action(anonymous)


def test_replace_needs_a_patient():
    order = draft(subject={"reference": "Group/g1"})
    with pytest.raises(ValueError):
        replace_order_actions(order, "mri-lumbar-without")
    actions = replace_order_actions(order, "mri-lumbar-without", patient_id="p7")
    assert actions[-1]["resource"]["subject"] == {"reference": "Patient/p7"}


def test_delete_action():
    action = delete_order_action(draft(), "Remove the draft lumbar imaging order")
    assert action == {
        "type": "delete",
        "description": "Remove the draft lumbar imaging order",
        "resourceId": "ServiceRequest/sr1",
    }
    assert_valid_actions([action])


# --- escalate


def test_escalate_changes_only_the_priority():
    order = draft(priority="routine")
    before = copy.deepcopy(order.resource)
    action = escalate_order_action(order)
    assert action["type"] == "update"
    assert action["description"]
    assert action["resource"] == {**before, "priority": "stat"}
    assert order.resource == before
    assert_valid_actions([action])


def test_escalate_can_carry_the_rating():
    order = argonaut_order()
    rating = rate(order, "emergency", None)
    action = escalate_order_action(order, "urgent", rating=rating, consult_id=CONSULT_ID)
    resource = action["resource"]
    assert resource["priority"] == "urgent"
    assert [e["url"] for e in resource["extension"]] == [
        "http://fhir.org/argonaut/Extension/pama-rating",
        "http://fhir.org/argonaut/Extension/pama-rating-qcdsm-consulted",
        "http://fhir.org/argonaut/Extension/pama-rating-consult-id",
    ]
    assert "extension" not in order.resource and "priority" not in order.resource
    with pytest.raises(ValueError):
        escalate_order_action(order, "stat", rating=rating)


def test_escalate_rejects_a_bad_priority():
    with pytest.raises(ValueError):
        escalate_order_action(draft(), "now")


# --- what the service creates, validated here rather than per request


def created_resources(response: dict) -> list[dict]:
    """Every resource a card's suggestion or a system action asks the EHR to create or update."""
    actions = [action for card in response.get("cards", []) for suggestion in card.get("suggestions", [])
               for action in suggestion.get("actions", [])]
    actions += response.get("systemActions", [])
    return [a["resource"] for a in actions if isinstance(a.get("resource"), dict)]


CASES = sorted((Path(__file__).parent / "cases").glob("*.json"))


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_every_service_request_the_service_creates_is_valid_fhir(client, path):
    from test_clinical_cases import case_request, load_case

    service_id, body = case_request(load_case(path))
    response = client.post(f"/cds-services/{service_id}", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    for resource in created_resources(response.get_json()):
        if resource.get("resourceType") == "ServiceRequest":
            assert reparsed(resource) == resource
