"""Order-time advice through the real HTTP service: every tier × modality gets the documented rating
(ACR Appropriateness Criteria Low Back Pain 2021 as mapped in the order-hooks issue) and card."""

import uuid
from datetime import timedelta

import pytest
from conftest import today

from cds_service.prefetch import prefetch_for
from cds_service.validation import problems

CPT = "http://www.ama-assn.org/go/cpt"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
PAMA = "http://fhir.org/argonaut/Extension/pama-rating"
STUDIES = {"radiograph": "72100", "ct": "72131", "mri-without": "72148", "mri-without-with": "72158"}
RATINGS = {  # tier → modality → PAMA rating ("may be appropriate" is rated appropriate)
    "emergency": {"radiograph": "not-appropriate", "ct": "appropriate", "mri-without": "appropriate",
                  "mri-without-with": "appropriate"},
    "imaging": {"radiograph": "appropriate", "ct": "appropriate", "mri-without": "appropriate",
                "mri-without-with": "appropriate"},
    "consider-early": {m: "not-appropriate" for m in STUDIES},
    "consider-late": {"radiograph": "appropriate", "ct": "not-appropriate", "mri-without": "appropriate",
                      "mri-without-with": "appropriate"},
    "none": {m: "not-appropriate" for m in STUDIES},
}
INDICATOR = {"emergency": "critical", "imaging": "warning", "consider-early": "info", "consider-late": "info",
             "none": "info"}


def day(days_ago: int) -> str:
    return (today() - timedelta(days=days_ago)).isoformat()


def condition(cid, code, display, onset_days):
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": "Patient/pt"},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                           "code": "active"}]},
            "code": {"coding": [{"system": ICD, "code": code, "display": display}]},
            "onsetDateTime": day(onset_days)}


def patient_for(tier: str) -> list[dict]:
    age = {"none": 35, "emergency": 40, "imaging": 45}.get(tier, 55)
    lbp_days = {"consider-late": 60, "none": 7}.get(tier, 14)
    resources = [{"resourceType": "Patient", "id": "pt", "gender": "female", "birthDate": day(age * 366)},
                 condition("lbp", "M54.50", "Low back pain, unspecified", lbp_days)]
    if tier == "emergency":
        resources.append(condition("ret", "R33.9", "Retention of urine, unspecified", 1))
    if tier == "imaging":
        resources.append(condition("ca", "C61", "Malignant neoplasm of prostate", 400))
    return resources


def draft(code=None, text=None, sid="sr1"):
    concept = {"coding": [{"system": CPT, "code": code}]} if code else {}
    if text:
        concept["text"] = text
    return {"resourceType": "ServiceRequest", "id": sid, "status": "draft", "intent": "order",
            "subject": {"reference": "Patient/pt"}, "code": concept}


def order_select(service, resources, orders, hook="order-select", selections=None):
    context = {"userId": "Practitioner/1", "patientId": "pt",
               "draftOrders": {"resourceType": "Bundle", "type": "collection",
                               "entry": [{"resource": o} for o in orders]}}
    if hook == "order-select":
        context["selections"] = selections if selections is not None else [
            f"ServiceRequest/{o['id']}" for o in orders]
    body = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context,
            "prefetch": prefetch_for(resources)}
    service_id = "lbp-imaging-order-select" if hook == "order-select" else "lbp-imaging-order-sign"
    response = service.post(service_id, body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert problems("response", result) == []
    return result


def rating(result, sid="sr1"):
    for action in result.get("systemActions", []):
        if action["resource"].get("id") == sid:
            ext = next(e for e in action["resource"]["extension"] if e["url"] == PAMA)
            return ext["valueCodeableConcept"]["coding"][0]["code"]
    return None


def actions(card):
    return [(a["type"], a.get("resource", {}).get("code", {}).get("coding", [{}])[0].get("code"))
            for s in card.get("suggestions", []) for a in s["actions"]]


@pytest.mark.parametrize("tier", list(RATINGS))
@pytest.mark.parametrize("modality", list(STUDIES))
def test_each_tier_and_modality_gets_the_documented_rating_and_card(service, tier, modality):
    result = order_select(service, patient_for(tier), [draft(STUDIES[modality])])
    assert rating(result) == RATINGS[tier][modality]
    assert result["systemActions"] == result["extension"]["systemActions"]
    assert all(a["description"] for a in result["systemActions"])
    card = result["cards"][0]
    assert card["indicator"] == INDICATOR[tier]
    assert card["extension"]["lbp-redflags"]["tier"] == tier.split("-")[0]


@pytest.mark.parametrize("modality", ["radiograph", "ct"])
def test_imaging_tier_replaces_a_radiograph_or_ct_with_mri_without_and_with(service, modality):
    card = order_select(service, patient_for("imaging"), [draft(STUDIES[modality])])["cards"][0]
    replace = next(s for s in card["suggestions"] if s["label"].startswith("Replace"))
    assert replace["isRecommended"]
    kinds = [(a["type"], a.get("resourceId")) for a in replace["actions"]]
    assert ("delete", "ServiceRequest/sr1") in kinds
    assert ("create", "72158") in [(t, c) for t, c in actions({"suggestions": [replace]})]


def test_imaging_tier_offers_the_contrast_study_over_mri_without(service):
    result = order_select(service, patient_for("imaging"), [draft("72148")])
    assert rating(result) == "appropriate"
    assert ("create", "72158") in actions(result["cards"][0])


def test_imaging_tier_confirms_the_recommended_study(service):
    card = order_select(service, patient_for("imaging"), [draft("72158")])["cards"][0]
    assert not [s for s in card["suggestions"] if s["label"].startswith("Replace")]
    assert any(s["label"].startswith("Order labs") for s in card["suggestions"])
    assert "cancer-history" in card["extension"]["lbp-redflags"]["redFlags"]


def test_emergency_tier_is_critical_even_with_mri_drafted_and_makes_it_stat(service):
    card = order_select(service, patient_for("emergency"), [draft("72158")])["cards"][0]
    assert card["indicator"] == "critical"
    update = [a for s in card["suggestions"] for a in s["actions"] if a["type"] == "update"]
    assert update and update[0]["resource"]["priority"] == "stat"


def test_no_red_flags_suggests_removing_the_draft_with_override_reasons(service):
    card = order_select(service, patient_for("none"), [draft("72148")])["cards"][0]
    assert "not routinely indicated" in card["summary"]
    remove = next(s for s in card["suggestions"] if s["label"].startswith("Remove"))
    assert remove["actions"] == [{"type": "delete", "description": remove["actions"][0]["description"],
                                  "resourceId": "ServiceRequest/sr1"}]
    codes = {r["code"] for r in card["overrideReasons"]}
    assert {"surgical-candidate", "shared-decision", "prior-imaging-outside"} <= codes


def test_consider_tier_says_imaging_is_not_indicated_yet_and_suggests_labs(service):
    card = order_select(service, patient_for("consider-early"), [draft("72148")])["cards"][0]
    assert "no imaging yet" in card["summary"]
    assert any(s["label"].startswith("Order labs") for s in card["suggestions"])


def test_text_only_order_is_recognised(service):
    result = order_select(service, patient_for("none"), [draft(text="MRI L-spine w/o contrast")])
    assert rating(result) == "not-appropriate"


def test_non_lumbar_order_gets_no_rating_and_no_card(service):
    result = order_select(service, patient_for("imaging"), [draft("72141", "MRI cervical spine")])
    assert result["cards"] == [] and "systemActions" not in result


def test_empty_draft_order_is_harmless(service):
    empty = {"resourceType": "ServiceRequest", "id": "example-request-id", "status": "draft", "intent": "plan",
             "code": {"coding": [{}]}, "reasonCode": []}
    assert order_select(service, patient_for("imaging"), [empty]) == {"cards": []}


def test_lbp_reason_on_the_order_makes_a_patient_applicable(service):
    resources = [{"resourceType": "Patient", "id": "pt", "birthDate": day(30 * 366)}]
    order = draft("72148")
    order["reasonCode"] = [{"coding": [{"system": "http://snomed.info/sct", "code": "279039007"}]}]
    result = order_select(service, resources, [order])
    assert result["cards"][0]["extension"]["lbp-redflags"]["tier"] == "none"


def test_every_lumbar_order_is_rated_but_the_card_speaks_of_the_selection(service):
    orders = [draft("72100", sid="xr"), draft("72158", sid="mri")]
    result = order_select(service, patient_for("imaging"), orders, selections=["ServiceRequest/mri"])
    assert rating(result, "xr") == "appropriate" and rating(result, "mri") == "appropriate"
    spoken = [r["order"] for r in result["cards"][0]["extension"]["lbp-redflags"]["ratings"]]
    assert spoken == ["ServiceRequest/mri"]


def test_order_sign_rates_like_order_select(service):
    result = order_select(service, patient_for("none"), [draft("72158")], hook="order-sign")
    assert rating(result) == "not-appropriate"


def test_a_selection_without_lumbar_imaging_gets_no_card_but_the_drafts_are_rated(service):
    lab = {"resourceType": "ServiceRequest", "id": "lab1", "status": "draft", "intent": "order",
           "subject": {"reference": "Patient/pt"}, "code": {"text": "CBC"}}
    result = order_select(service, patient_for("imaging"), [draft("72131"), lab], selections=["ServiceRequest/lab1"])
    assert result["cards"] == [] and rating(result) == "appropriate"


def test_an_emergency_is_shown_even_when_the_imaging_draft_is_not_selected(service):
    lab = {"resourceType": "ServiceRequest", "id": "lab1", "status": "draft", "intent": "order",
           "subject": {"reference": "Patient/pt"}, "code": {"text": "CBC"}}
    result = order_select(service, patient_for("emergency"), [draft("72148"), lab],
                          selections=["ServiceRequest/lab1"])
    assert result["cards"][0]["indicator"] == "critical"


def test_a_draft_without_an_id_is_rated_on_the_card_but_gets_no_update_action(service):
    order = draft("72148")
    del order["id"]
    result = order_select(service, patient_for("none"), [order], selections=[])
    assert "systemActions" not in result
    assert result["cards"][0]["extension"]["lbp-redflags"]["ratings"][0]["rating"] == "not-appropriate"


def test_a_reused_hook_instance_for_another_patient_gets_other_uuids():
    from cards import respond
    from fhir_mappings.record import PatientRecord

    def card_uuid(patient_id):
        resources = patient_for("imaging")
        resources[0]["id"] = patient_id
        for resource in resources[1:]:
            resource["subject"] = {"reference": f"Patient/{patient_id}"}
        record = PatientRecord.from_resources(resources, patient_id=patient_id)
        return respond("patient-view", "lbp-patient-view", record, today=today(), hook_instance="same")["cards"][0]
    first, again, other = card_uuid("pt"), card_uuid("pt"), card_uuid("pt2")
    assert first["uuid"] == again["uuid"] != other["uuid"]
