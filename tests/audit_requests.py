"""Hook requests and feedback bodies for the audit, switch and dashboard tests, and a look into the store."""

from __future__ import annotations

import json
import uuid

from conftest import fixture_json, today
from sqlalchemy import create_engine, text

from cds_service.cli import example_request
from cds_service.example_patients import examples

CAPTURED = "cds-hooks-spec/cds-hooks-sandbox/captured"
OVERRIDE_SYSTEM = "https://lbp-redflags.example/fhir/CodeSystem/override-reason"

EMERGENCY_CES = "01-"  # encounter-start, emergency (bladder-bowel-dysfunction, saddle-anesthesia)
EMERGENCY_MSCC = "02-"  # patient-view, emergency (cancer-history, age-50-plus, neuro-deficit)
IMAGING = "03-"  # patient-view, imaging (cancer-history, age-50-plus)
CONSIDER = "04-"  # patient-view, consider (age-50-plus, elevated-esr)
NO_FLAG = "05-"  # patient-view, no card
ORDER_IMAGING = "07-"  # order-select, imaging (age-50-plus, elevated-psa)


def example_body(prefix: str, patient_id: str | None = None) -> tuple[str, dict]:
    """(service id, request) for a bundled example patient; patient_id renames the patient throughout."""
    example = next(e for e in examples(today()) if e["file"].startswith(prefix))
    service_id, body = example_request(example)
    if patient_id:
        old = body["context"]["patientId"]
        body = json.loads(json.dumps(body).replace(f'"{old}"', f'"{patient_id}"')
                          .replace(f"Patient/{old}", f"Patient/{patient_id}"))
    body["hookInstance"] = str(uuid.uuid4())
    return service_id, body


def with_esr(body: dict, value: float) -> dict:
    """The request with one more lab: an ESR of `value` mm/h today (a new red flag)."""
    body = json.loads(json.dumps(body))
    patient = body["context"]["patientId"]
    esr = {"resourceType": "Observation", "id": f"esr-{uuid.uuid4().hex[:8]}", "status": "final",
           "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                     "code": "laboratory"}]}],
           "code": {"coding": [{"system": "http://loinc.org", "code": "4537-7"}], "text": "ESR"},
           "subject": {"reference": f"Patient/{patient}"}, "effectiveDateTime": today().isoformat(),
           "valueQuantity": {"value": value, "unit": "mm/h", "system": "http://unitsofmeasure.org", "code": "mm/h"}}
    bundle = body["prefetch"].setdefault("observations", {"resourceType": "Bundle", "type": "searchset", "entry": []})
    bundle.setdefault("entry", []).append({"resource": esr})
    body["hookInstance"] = str(uuid.uuid4())
    return body


def feedback(card_uuid: str, outcome: str, when: str = "2026-11-24T03:46:53.670Z", code: str | None = None,
             comment: str | None = None, system: str = OVERRIDE_SYSTEM) -> dict:
    item = {"card": card_uuid, "outcome": outcome, "outcomeTimestamp": when}
    if code or comment:
        item["overrideReason"] = {}
        if code:
            item["overrideReason"]["reason"] = {"system": system, "code": code}
        if comment:
            item["overrideReason"]["userComment"] = comment
    return {"feedback": [item]}


def sandbox_feedback(name: str, card_uuid: str) -> dict:
    """A feedback body captured from the CDS Hooks sandbox, about one of our cards."""
    body = fixture_json(f"{CAPTURED}/{name}.json")["body"]
    body["feedback"][0]["card"] = card_uuid
    return body


def rows(database_url: str, sql: str, **params) -> list:
    """The rows of a query (or the rows a statement changed, as [[count]]), committed."""
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as conn:
            result = conn.execute(text(sql), params)
            return list(result) if result.returns_rows else [[result.rowcount]]
    finally:
        engine.dispose()


HOSTILE_COMMENT = '=HYPERLINK("http://evil.example","x") <script>alert(1)</script>'


def seed(post, suffix: str = "") -> None:
    """A small known history (post(path, body) -> JSON answer), the figures of which SEEDED gives.

    Six patients: four imaging cards at patient-view (one accepted, two overridden 'already imaged',
    one of them with a hostile comment, one without feedback), one consider card overridden
    'patient declined', one patient without a card; one order-select imaging card without feedback.
    """
    def card_for(prefix, patient):
        service_id, body = example_body(prefix, patient_id=patient)
        cards = post(f"/cds-services/{service_id}", body)["cards"]
        return service_id, (cards[0]["uuid"] if cards else None)

    answers = {}
    for prefix, patient in ((IMAGING, "dash-a"), (IMAGING, "dash-b"), (IMAGING, "dash-f"), (IMAGING, "dash-g"),
                            (CONSIDER, "dash-c"), (NO_FLAG, "dash-d"), (ORDER_IMAGING, "dash-e")):
        answers[patient] = card_for(prefix, patient + suffix)
    view = "/cds-services/lbp-patient-view/feedback"
    post(view, feedback(answers["dash-a"][1], "accepted"))
    post(view, feedback(answers["dash-b"][1], "overridden", code="already-imaged", comment=HOSTILE_COMMENT))
    post(view, feedback(answers["dash-f"][1], "overridden", code="already-imaged"))
    post(view, feedback(answers["dash-c"][1], "overridden", code="patient-declined"))


SEEDED = {
    "totals": {"calls": 7, "patients": 7, "cards_issued": 6,
               "feedback": {"accepted": 1, "overridden": 3, "cards_with_feedback": 4}},
    "imaging": {"shown": 5, "accepted": 1, "overridden": 2, "no_feedback": 2, "acceptance_rate": 0.2,
                "override_rate": 0.4},
    "consider": {"shown": 1, "accepted": 0, "overridden": 1, "no_feedback": 0, "acceptance_rate": 0.0,
                 "override_rate": 1.0},
    "reasons": [("already-imaged", 2), ("patient-declined", 1)],
}
