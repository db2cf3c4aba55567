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


# ---------------------------------------------------------------- duplicates, clients, restarts

def test_the_same_item_sent_twice_is_stored_once(client, app):
    uuid = issue_card(client)
    body = fixture_json(f"{CAPTURED}/feedback-accepted.json")["body"]
    body["feedback"][0]["card"] = uuid
    body["feedback"].append(dict(body["feedback"][0], outcomeTimestamp="2026-11-24T03:46:51.635+00:00"))
    assert client.post("/cds-services/lbp-patient-view/feedback", json=body).get_json() == \
        {"stored": 1, "alreadyStored": 1}
    assert client.post("/cds-services/lbp-patient-view/feedback", json=body).get_json() == \
        {"stored": 0, "alreadyStored": 2}
    assert len(app.extensions["lbp_store"].feedback_for(uuid)) == 1


def test_a_later_outcome_on_the_same_card_is_a_new_item(client, app):
    uuid = issue_card(client)
    body = fixture_json(f"{CAPTURED}/feedback-accepted.json")["body"]
    body["feedback"][0]["card"] = uuid
    client.post("/cds-services/lbp-patient-view/feedback", json=body)
    body["feedback"][0]["outcomeTimestamp"] = "2026-11-24T03:50:00Z"
    assert client.post("/cds-services/lbp-patient-view/feedback", json=body).get_json()["stored"] == 1
    assert len(app.extensions["lbp_store"].feedback_for(uuid)) == 2


def test_feedback_from_another_client_than_the_one_shown_the_card_is_404(app):
    state = {"issuer": "https://ehr-a.example"}
    from flask import g

    from cds_service.settings import AuthClient

    @app.before_request
    def _client():
        g.cds_client = AuthClient(issuer=state["issuer"], jwks_file="unused.json",
                                     fhir_servers=("http://localhost:8081",))

    client = app.test_client()
    uuid = issue_card(client)
    body = fixture_json(f"{CAPTURED}/feedback-accepted.json")["body"]
    body["feedback"][0]["card"] = uuid
    state["issuer"] = "https://ehr-b.example"
    assert client.post("/cds-services/lbp-patient-view/feedback", json=body).status_code == 404
    state["issuer"] = "https://ehr-a.example"
    assert client.post("/cds-services/lbp-patient-view/feedback", json=body).status_code == 200
    assert app.extensions["lbp_store"].feedback_for(uuid)[0]["client_issuer"] == "https://ehr-a.example"


def test_feedback_on_a_card_held_back_in_silent_mode_is_404(tmp_path):
    from cds_service.app import create_app
    from cds_service.settings import load_settings

    app = create_app(load_settings(env={}, database_url=f"sqlite:///{tmp_path / 's.db'}", silent_mode=True))
    client = app.test_client()
    capture = fixture_json(f"{CAPTURED}/patient-view.json")
    assert client.post(capture["path"], json=capture["body"]).get_json() == {"cards": []}
    held = app.extensions["lbp_store"].engine.connect().exec_driver_sql("SELECT uuid FROM issued_cards").scalar()
    body = fixture_json(f"{CAPTURED}/feedback-accepted.json")["body"]
    body["feedback"][0]["card"] = held
    assert client.post("/cds-services/lbp-patient-view/feedback", json=body).status_code == 404


def test_feedback_while_the_database_is_down_is_503_not_500(tmp_path):
    from cds_service.app import create_app
    from cds_service.settings import load_settings

    app = create_app(load_settings(env={}, database_url=f"sqlite:///{tmp_path / 'no-dir' / 's.db'}"))
    body = fixture_json(f"{CAPTURED}/feedback-accepted.json")["body"]
    response = app.test_client().post("/cds-services/lbp-patient-view/feedback", json=body)
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "service-unavailable"


def sandbox_round(post) -> None:
    """Cards from the sandbox's captured hook calls, then its three captured feedback bodies about them."""
    view = fixture_json(f"{CAPTURED}/patient-view.json")
    order = fixture_json(f"{CAPTURED}/order-select-pama.json")
    view_card = post(view["path"], view["body"])["cards"][0]["uuid"]
    order_card = post(order["path"], order["body"])["cards"][0]["uuid"]
    for name, path, uuid in (("feedback-accepted", view["path"], view_card),
                             ("feedback-overridden-with-reason", view["path"], view_card),
                             ("feedback-overridden", order["path"], order_card)):
        body = fixture_json(f"{CAPTURED}/{name}.json")["body"]
        body["feedback"][0]["card"] = uuid
        post(path + "/feedback", body)


def test_sandbox_feedback_is_stored_and_counted_across_a_restart(tmp_path, start_service):
    """The real service (gunicorn, SQLite file), restarted on the same database between two rounds."""
    import requests

    database = f"sqlite:///{tmp_path / 'restart.db'}"
    token = "restart-test-admin-token"

    def post_to(service):
        def post(path, body):
            response = requests.post(service.base_url + path, json=body, timeout=60)
            assert response.status_code == 200, response.text
            return response.json()
        return post

    first = start_service(database_url=database, admin_token=token)
    sandbox_round(post_to(first))
    first.stop()
    second = start_service(database_url=database, admin_token=token)
    # The sandbox sends the same feedback again after a reconnect: the same items are not counted twice.
    for name in ("feedback-accepted", "feedback-overridden-with-reason"):
        body = fixture_json(f"{CAPTURED}/{name}.json")["body"]
        uuid = requests.get(second.base_url + "/dashboard/export.csv", timeout=30,
                            headers={"Authorization": f"Bearer {token}"}).text.splitlines()[1].split(",")[3]
        body["feedback"][0]["card"] = uuid
        assert requests.post(second.base_url + "/cds-services/lbp-patient-view/feedback", json=body,
                             timeout=30).json() == {"stored": 0, "alreadyStored": 1}
    totals = requests.get(second.base_url + "/dashboard/data.json", timeout=30,
                          headers={"Authorization": f"Bearer {token}"}).json()["totals"]
    assert totals["cards_issued"] == 2
    assert totals["feedback"] == {"accepted": 1, "overridden": 2, "cards_with_feedback": 2}
