"""Clinical cases (tests/cases/*.json) through the real HTTP service (gunicorn, real sockets), with prefetch.

Each case states its expected tier, red flags and order ratings, and the source of that answer.
"""

from pathlib import Path

import case_files
import pytest
from conftest import today

from cds_service.example_patients import hook_request
from cds_service.validation import problems

CASES = sorted((Path(__file__).parent / "cases").glob("*.json"))
INDICATOR = {"emergency": "critical", "imaging": "warning", "consider": "info", "none": "info"}
PAMA_RATING = "http://fhir.org/argonaut/Extension/pama-rating"


def load_case(path: Path) -> dict:
    return case_files.load_case(path, today())


def case_request(case: dict) -> tuple[str, dict]:
    service_id, body = hook_request(case["hook"], case["resources"], draft_orders=case.get("draftOrders", []),
                                    selections=case.get("selections"), encounter_id=case.get("encounterId"),
                                    user_id="Practitioner/test")
    active = [r for r in case["resources"] if r["resourceType"] == "ServiceRequest" and r.get("status") == "active"]
    body["prefetch"]["activeServiceRequests"].update(total=len(active), entry=[{"resource": r} for r in active])
    return service_id, body


def suggested(card: dict) -> list[str]:
    """The names of the orders a card's suggestions would create."""
    return [a["resource"]["code"]["text"] for s in card.get("suggestions", []) for a in s["actions"]
            if a["type"] == "create"]


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
    for text in expect.get("unavailableInclude", []):
        assert any(item.startswith(text) for item in ext.get("unavailable", [])), f"{why}; got {ext.get('unavailable')}"
    for text in expect.get("evidenceValueInclude", []):
        assert text in card["detail"], f"{why}: the detail should show {text!r}"
    for text in expect.get("detailIncludes", []):
        assert text in card["detail"], f"{why}: the detail should mention {text!r}"
    for text in expect.get("detailExcludes", []):
        assert text not in card["detail"], f"{why}: the detail should not mention {text!r}"
    for text in expect.get("summaryIncludes", []):
        assert text in card["summary"], f"{why}: the summary should mention {text!r}"
    for text in expect.get("suggestionsInclude", []):
        assert any(name.startswith(text) for name in suggested(card)), f"{why}: should suggest {text!r}"
    for text in expect.get("suggestionsExclude", []):
        assert not any(name.startswith(text) for name in suggested(card)), f"{why}: should not suggest {text!r}"
    for flag in expect.get("redFlagsInclude", []):
        assert ext["evidence"][flag], f"{flag} has no evidence reference"
