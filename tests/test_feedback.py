"""Feedback (CDS Hooks 2.0): stored for cards this service issued; unknown cards are 404."""

from conftest import fixture_json

CAPTURED = "cds-hooks-spec/cds-hooks-sandbox/captured"


def issue_card(client) -> str:
    capture = fixture_json(f"{CAPTURED}/patient-view.json")
    return client.post(capture["path"], json=capture["body"]).get_json()["cards"][0]["uuid"]


def test_feedback_on_an_issued_card_is_stored(client, app):
    uuid = issue_card(client)
    body = fixture_json(f"{CAPTURED}/feedback-overridden-with-reason.json")["body"]
    body["feedback"][0]["card"] = uuid
    response = client.post("/cds-services/lbp-patient-view/feedback", json=body)
    assert response.status_code == 200
    stored = app.extensions["lbp_store"].feedback_for(uuid)
    assert stored[0]["outcome"] == "overridden"
    assert stored[0]["override_code"] == body["feedback"][0]["overrideReason"]["reason"]["code"]


def test_feedback_on_an_unknown_card_is_404_and_stores_nothing(client, app):
    uuid = issue_card(client)
    body = fixture_json(f"{CAPTURED}/feedback-accepted.json")["body"]
    known = dict(body["feedback"][0], card=uuid)
    body["feedback"] = [known, dict(known, card="a0000000-0000-4000-8000-000000000001")]
    response = client.post("/cds-services/lbp-patient-view/feedback", json=body)
    assert response.status_code == 404
    assert response.get_json()["error"]["details"][0]["field"] == "feedback.card"
    assert app.extensions["lbp_store"].feedback_for(uuid) == []


def test_feedback_for_a_card_of_another_service_is_404(client):
    uuid = issue_card(client)
    body = fixture_json(f"{CAPTURED}/feedback-accepted.json")["body"]
    body["feedback"][0]["card"] = uuid
    assert client.post("/cds-services/lbp-encounter-start/feedback", json=body).status_code == 404


def test_invalid_feedback_is_400(client):
    response = client.post("/cds-services/lbp-patient-view/feedback", json={"feedback": [{"card": "x"}]})
    assert response.status_code == 400


def test_spec_feedback_examples_are_valid_feedback(client):
    from cds_service.validation import problems

    for name in ("feedback-accepted", "feedback-overridden", "feedback-overridden-with-reason"):
        assert problems("feedback", fixture_json(f"cds-hooks-spec/hl7-cds-hooks-2.0.1/examples/{name}.json")) == []


def test_feedback_from_the_future_is_400(client):
    body = fixture_json(f"{CAPTURED}/feedback-accepted.json")["body"]
    body["feedback"][0].update(card=issue_card(client), outcomeTimestamp="2999-01-01T00:00:00Z")
    response = client.post("/cds-services/lbp-patient-view/feedback", json=body)
    assert response.status_code == 400
    assert response.get_json()["error"]["details"][0]["field"] == "feedback.0.outcomeTimestamp"


def test_overridden_feedback_cannot_accept_suggestions(client):
    body = fixture_json(f"{CAPTURED}/feedback-accepted.json")["body"]
    body["feedback"][0].update(card=issue_card(client), outcome="overridden")
    assert client.post("/cds-services/lbp-patient-view/feedback", json=body).status_code == 400
