"""Clinical cases (tests/cases/*.json) through the real HTTP service (gunicorn, real sockets), with prefetch.

Each case states its expected tier, red flags and order ratings, and the source of that answer.
"""

import json
import uuid
from pathlib import Path

import pytest
from conftest import today

from cds_service.example_patients import resolve_dates
from cds_service.prefetch import prefetch_for
from cds_service.validation import problems

CASES = sorted((Path(__file__).parent / "cases").glob("*.json"))
SERVICE_FOR_HOOK = {"patient-view": "lbp-patient-view", "encounter-start": "lbp-encounter-start",
                    "order-select": "lbp-imaging-order-select", "order-sign": "lbp-imaging-order-sign"}
INDICATOR = {"emergency": "critical", "imaging": "warning", "consider": "info", "none": "info"}
PAMA_RATING = "http://fhir.org/argonaut/Extension/pama-rating"


def load_case(path: Path) -> dict:
    return resolve_dates(json.loads(path.read_text(encoding="utf-8")), today())


def case_request(case: dict) -> tuple[str, dict]:
    resources = case["resources"]
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    hook = case["hook"]
    context = {"userId": "Practitioner/test", "patientId": patient["id"]}
    if case.get("encounterId"):
        context["encounterId"] = case["encounterId"]
    if hook in ("order-select", "order-sign"):
        context["draftOrders"] = {"resourceType": "Bundle", "type": "collection",
                                  "entry": [{"resource": r} for r in case.get("draftOrders", [])]}
        if hook == "order-select":
            context["selections"] = case.get("selections") or [
                f"ServiceRequest/{r['id']}" for r in case.get("draftOrders", [])]
    body = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context,
            "prefetch": prefetch_for(resources)}
    return SERVICE_FOR_HOOK[hook], body


def ratings_of(response: dict) -> dict[str, str]:
    out = {}
    for action in response.get("systemActions", []):
        resource = action["resource"]
        for ext in resource.get("extension", []):
            if ext["url"] == PAMA_RATING:
                codes = [c["code"] for c in ext["valueCodeableConcept"]["coding"]
                         if c["system"] == "http://fhir.org/argonaut/CodeSystem/pama-rating"]
                out[f"ServiceRequest/{resource['id']}"] = codes[0]
    return out


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_clinical_case(service, path):
    case = load_case(path)
    service_id, body = case_request(case)
    response = service.post(service_id, body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert problems("response", result) == []
    expect = case["expect"]
    why = f"{case['title']} — expected per {case['source']}"
    if expect.get("tier") is None:
        assert result["cards"] == [], why
        return
    assert len(result["cards"]) == 1, why
    card = result["cards"][0]
    ext = card["extension"]["lbp-redflags"]
    assert ext["tier"] == expect["tier"], f"{why}; got flags {ext['redFlags']}"
    assert card["indicator"] == expect.get("indicator", INDICATOR[expect["tier"]]), why
    flags = set(ext["redFlags"])
    assert set(expect.get("redFlagsInclude", [])) <= flags, f"{why}; got {sorted(flags)}"
    assert not set(expect.get("redFlagsExclude", [])) & flags, f"{why}; got {sorted(flags)}"
    for reference, rating in (expect.get("rating") or {}).items():
        assert ratings_of(result).get(reference) == rating, f"{why}: rating of {reference}"
    for flag in expect.get("redFlagsInclude", []):
        assert ext["evidence"][flag], f"{flag} has no evidence reference"
