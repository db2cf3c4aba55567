"""What the cards say and suggest (issue 13): labs not repeated, urology for an undiagnosed PSA of 20 or
more, suggested orders carrying their own PAMA rating, the preferred study explained, and a new red flag
added from data alone."""

from __future__ import annotations

import json
import shutil
from datetime import date, timedelta

import pytest

from cards import data, respond
from fhir_mappings import terminology
from fhir_mappings.record import PatientRecord

TODAY = date(2026, 11, 24)
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
PAMA_RATING = "http://fhir.org/argonaut/Extension/pama-rating"


def ago(days: int) -> str:
    return (TODAY - timedelta(days=days)).isoformat()


def patient(age: int, gender: str) -> dict:
    return {"resourceType": "Patient", "id": "p", "gender": gender, "birthDate": f"{TODAY.year - age}-01-01"}


def condition(cid: str, code: str, text: str, days: int) -> dict:
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": "Patient/p"},
            "clinicalStatus": {"coding": [{"code": "active"}]},
            "code": {"coding": [{"system": ICD, "code": code}], "text": text}, "onsetDateTime": ago(days)}


def lab(oid: str, code: str, value: float, unit: str, days: int) -> dict:
    return {"resourceType": "Observation", "id": oid, "status": "final", "subject": {"reference": "Patient/p"},
            "code": {"coding": [{"system": LOINC, "code": code}]}, "effectiveDateTime": ago(days),
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}


LBP = condition("lbp", "M54.50", "Low back pain", 20)


def card_for(*resources, hook="patient-view", drafts=()):
    record = PatientRecord.from_resources(list(resources), patient_id="p")
    if drafts:
        record.draft_orders = {"resourceType": "Bundle", "entry": [{"resource": d} for d in drafts]}
    response = respond(hook, "svc", record, today=TODAY, hook_instance="h1")
    return response["cards"][0] if response["cards"] else None


def suggested_texts(card) -> list[str]:
    return [a["resource"]["code"]["text"] for s in card.get("suggestions", []) for a in s["actions"]
            if a["type"] == "create"]


def test_a_lab_resulted_within_14_days_is_not_suggested_again():
    card = card_for(patient(55, "female"), LBP, lab("esr", "4537-7", 30, "mm/h", 3))
    assert not any(t.startswith("ESR") for t in suggested_texts(card))
    assert "ESR 30 mm/h, 3 days ago" in card["detail"]


def test_a_lab_resulted_15_days_ago_is_suggested():
    card = card_for(patient(55, "female"), LBP, lab("esr", "4537-7", 30, "mm/h", 15))
    assert any(t.startswith("ESR") for t in suggested_texts(card))


def test_a_lab_with_an_active_order_is_not_suggested_again():
    order = {"resourceType": "ServiceRequest", "id": "cbc", "status": "active", "intent": "order",
             "subject": {"reference": "Patient/p"},
             "code": {"coding": [{"system": LOINC, "code": "58410-2"}], "text": "CBC"}}
    card = card_for(patient(55, "female"), LBP, order)
    assert not any(t.startswith("Full blood count") for t in suggested_texts(card))
    assert "Full blood count already ordered" in card["detail"]


def test_an_undiagnosed_psa_of_20_or_more_suggests_urology():
    card = card_for(patient(66, "male"), LBP, lab("psa", "2857-1", 48, "ng/mL", 5))
    assert card["extension"]["lbp-redflags"]["tier"] == "imaging"
    assert card["summary"].startswith("PSA 48 ng/mL")
    assert any("urology" in t.lower() for t in suggested_texts(card))
    assert "leaves out PSA 48 ng/mL" in card["detail"]


def test_a_known_prostate_cancer_gets_no_urology_referral_and_no_estimate():
    card = card_for(patient(66, "male"), LBP, lab("psa", "2857-1", 48, "ng/mL", 5),
                    condition("ca", "C61", "Prostate cancer", 400))
    assert not any("urology" in t.lower() for t in suggested_texts(card))
    assert data.recommendations()["probability_label"] not in card["detail"]


def test_the_one_click_mri_matches_the_next_step():
    card = card_for(patient(40, "female"), LBP, condition("ret", "R33.9", "Urinary retention", 1))
    study = next(t for t in suggested_texts(card) if t.startswith("MRI"))
    assert study == "MRI lumbar spine without and with IV contrast"
    assert "MRI lumbar spine without and with contrast" in card["detail"]
    assert "NICE NG234" not in card["detail"] and "whole spine" not in card["detail"]


def test_a_suggested_alternative_order_carries_its_own_pama_rating():
    ct = {"resourceType": "ServiceRequest", "id": "ct", "status": "draft", "intent": "order",
          "subject": {"reference": "Patient/p"},
          "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "72131"}], "text": "CT L-spine"}}
    card = card_for(patient(66, "male"), LBP, lab("psa", "2857-1", 48, "ng/mL", 5), hook="order-select", drafts=[ct])
    assert "is preferred over CT lumbar spine: contrast shows" in card["detail"]
    replace = next(s for s in card["suggestions"] if s["label"].startswith("Replace"))
    created = next(a["resource"] for a in replace["actions"] if a["type"] == "create")
    rating = next(e for e in created["extension"] if e["url"] == PAMA_RATING)
    assert rating["valueCodeableConcept"]["coding"][0]["code"] == "appropriate"


@pytest.fixture
def knowledge_copy(tmp_path, monkeypatch):
    """The knowledge and value-set files copied to a temporary directory the service then reads."""
    knowledge, valuesets = tmp_path / "knowledge", tmp_path / "valuesets"
    shutil.copytree(data.KNOWLEDGE_DIR, knowledge)
    shutil.copytree(terminology.VALUESET_DIR, valuesets)
    monkeypatch.setattr(data, "KNOWLEDGE_DIR", knowledge)
    monkeypatch.setattr(terminology, "VALUESET_DIR", valuesets)
    data.reload()
    yield knowledge, valuesets
    monkeypatch.undo()
    data.reload()


def test_a_new_red_flag_needs_only_a_value_set_and_a_knowledge_entry(knowledge_copy):
    knowledge, valuesets = knowledge_copy
    before = data.rules_version()
    value_set = {"id": "spinal-tenderness", "title": "Focal spinal tenderness",
                 "readFrom": {"Condition": ["code", "note"]}, "description": "Focal tenderness over a vertebra.",
                 "source": ["test"], "include": {}, "exclude": {},
                 "text": {"synonyms": ["spinal tenderness", "vertebral tenderness"], "exclude": []}}
    (valuesets / "spinal-tenderness.json").write_text(json.dumps(value_set, indent=2) + "\n")
    flags = json.loads((knowledge / "red_flags.json").read_text())
    flags["flags"]["spinal-tenderness"] = {
        "label": "Focal spinal tenderness", "short": "spinal tenderness", "group": "cancer", "describe": "label",
        "source": "Test source", "alone": "consider", "valueSets": ["spinal-tenderness"], "counts": "active"}
    (knowledge / "red_flags.json").write_text(json.dumps(flags, indent=2))
    data.reload()

    card = card_for(patient(40, "female"), LBP, condition("t", "R29.9", "Vertebral tenderness at L3", 2))
    ext = card["extension"]["lbp-redflags"]
    assert ext["tier"] == "consider" and ext["redFlags"] == ["spinal-tenderness"]
    assert card["summary"].startswith("Spinal tenderness with back pain")
    assert "**Focal spinal tenderness**" in card["detail"]
    assert ext["rulesVersion"] != before


def report(rid: str, conclusion: str, days: int) -> dict:
    return {"resourceType": "DiagnosticReport", "id": rid, "status": "final", "subject": {"reference": "Patient/p"},
            "category": [{"coding": [{"system": LOINC, "code": "LP29684-5"}]}], "code": {"text": "XR lumbar spine"},
            "effectiveDateTime": ago(days), "conclusion": conclusion}


def test_a_sentence_of_a_note_is_quoted_once_per_card():
    card = card_for(patient(45, "male"), LBP, report("xr", "Lytic lesion at L3, suspicious for metastasis.", 2))
    assert card["detail"].count("Lytic lesion at L3") == 1
    assert "(quoted above)" in card["detail"]
