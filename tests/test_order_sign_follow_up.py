"""order-sign after accepted advice at order-select shows the rating only; an emergency never is shortened."""

import copy
import uuid

from conftest import today

from cds_service.cli import example_request
from cds_service.example_patients import examples


def example(prefix):
    return next(e for e in examples(today()) if e["file"].startswith(prefix))


def select_then_sign(client, prefix, outcome="accepted"):
    _, select = example_request(example(prefix))
    card = client.post("/cds-services/lbp-imaging-order-select", json=select).get_json()["cards"][0]
    feedback = {"card": card["uuid"], "outcome": outcome, "outcomeTimestamp": "2026-11-24T10:00:00Z"}
    if outcome == "accepted":
        feedback["acceptedSuggestions"] = [{"id": card["suggestions"][0]["uuid"]}]
    assert client.post("/cds-services/lbp-imaging-order-select/feedback",
                       json={"feedback": [feedback]}).status_code == 200
    sign = copy.deepcopy(select)
    sign.update(hook="order-sign", hookInstance=str(uuid.uuid4()))
    del sign["context"]["selections"]
    return client.post("/cds-services/lbp-imaging-order-sign", json=sign).get_json()


def test_order_sign_is_shortened_to_the_rating_after_accepted_advice(client):
    result = select_then_sign(client, "07-")
    card = result["cards"][0]
    assert card["extension"]["lbp-redflags"]["followUp"] is True
    assert "suggestions" not in card
    assert result["systemActions"]  # the rating is still given


def test_order_sign_is_not_shortened_after_overridden_advice(client):
    card = select_then_sign(client, "07-", outcome="overridden")["cards"][0]
    assert "followUp" not in card["extension"]["lbp-redflags"]
    assert card["suggestions"]


def test_order_sign_without_prior_feedback_gets_the_full_card(client):
    _, sign = example_request(example("07-"))
    sign["hook"] = "order-sign"
    del sign["context"]["selections"]
    card = client.post("/cds-services/lbp-imaging-order-sign", json=sign).get_json()["cards"][0]
    assert card["suggestions"] and "followUp" not in card["extension"]["lbp-redflags"]


def test_the_store_keeps_no_patient_identifier(client, app):
    _, body = example_request(example("07-"))
    client.post("/cds-services/lbp-imaging-order-select", json=body)
    with app.extensions["lbp_store"].engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT * FROM issued_cards").fetchall()
    assert rows and not any(body["context"]["patientId"] in str(value) for row in rows for value in row)


def test_an_emergency_is_never_shortened_at_order_sign():
    import json
    from pathlib import Path

    from cards import respond
    from cds_service.example_patients import resolve_dates
    from fhir_mappings.record import PatientRecord

    case = resolve_dates(json.loads((Path(__file__).parent / "cases" /
                                     "73-order-select-emergency-cauda-equina-four-orders.json").read_text()), today())
    drafts = {"resourceType": "Bundle", "entry": [{"resource": r} for r in case["draftOrders"]]}
    record = PatientRecord.from_resources(case["resources"], draft_orders=drafts)
    result = respond("order-sign", "lbp-imaging-order-sign", record, today=today(), hook_instance="x",
                     accepted_at_select=lambda tier, studies: True)
    card = result["cards"][0]
    assert card["indicator"] == "critical" and card["suggestions"]
    assert "followUp" not in card["extension"]["lbp-redflags"]
