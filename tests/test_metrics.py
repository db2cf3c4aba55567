"""Metrics at /metrics (admin token only), what they count, and the hook deadline.

In-process tests read this process's registry (values add up over the session, so each test looks
at the change it causes); the tests through `lbp-redflags serve` check that gunicorn's workers add up.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

import pytest
from conftest import free_port, today
from ehr_client import EhrClient
from prometheus_client import REGISTRY

from cds_service.app import create_app
from cds_service.cli import example_request
from cds_service.example_patients import examples, load_file
from cds_service.settings import load_settings

TOKEN = "metrics-admin-token-for-tests"


def example(title_start: str) -> dict:
    return next(e for e in examples(today()) if e["file"].startswith(title_start))


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def admin_app(tmp_path):
    return create_app(load_settings(env={}, database_url=f"sqlite:///{tmp_path / 'm.db'}", admin_token=TOKEN))


@pytest.fixture
def admin(admin_app):
    return admin_app.test_client()


def scrape(client, token: str = TOKEN):
    return client.get("/metrics", headers={"Authorization": f"Bearer {token}"})


# ---------------------------------------------------------------- who may read them


def test_metrics_are_off_without_an_admin_token_and_the_log_says_why(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lbp_redflags")
    app = create_app(load_settings(env={}, database_url=f"sqlite:///{tmp_path / 'off.db'}"))
    response = app.test_client().get("/metrics", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not-found"
    assert any("/metrics is off" in r.getMessage() and "LBP_ADMIN_TOKEN" in r.getMessage() for r in caplog.records)


def test_metrics_without_a_bearer_token_are_401(admin):
    response = admin.get("/metrics")
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_metrics_with_a_wrong_token_are_401(admin):
    assert scrape(admin, "not-the-token").status_code == 401


def test_metrics_with_the_admin_token_are_prometheus_text(admin):
    response = scrape(admin)
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert "# TYPE lbp_requests_total counter" in response.text


# ---------------------------------------------------------------- what they count


def test_hook_calls_are_counted_by_service_hook_and_status(admin):
    labels = {"service": "lbp-patient-view", "hook": "patient-view"}
    ok_before = value("lbp_requests_total", **labels, status="200")
    bad_before = value("lbp_requests_total", **labels, status="400")
    timed_before = value("lbp_request_duration_seconds_count", **labels)
    service_id, body = example_request(example("02"))
    assert admin.post(f"/cds-services/{service_id}", json=body).status_code == 200
    assert admin.post(f"/cds-services/{service_id}", json={"hook": "patient-view"}).status_code == 400
    assert value("lbp_requests_total", **labels, status="200") == ok_before + 1
    assert value("lbp_requests_total", **labels, status="400") == bad_before + 1
    assert value("lbp_request_duration_seconds_count", **labels) == timed_before + 2


def test_calls_refused_by_authentication_are_counted(tmp_path):
    from conftest import SPEC

    config = tmp_path / "lbp.toml"
    config.write_text(f'''public_base_url = "https://cds.example.org"
[[auth.clients]]
issuer = "https://sandbox.cds-hooks.org"
jwks_file = "{SPEC / 'cds-hooks-sandbox' / 'jwks.json'}"
''')
    app = create_app(load_settings(config, env={}, database_url=f"sqlite:///{tmp_path / 'a.db'}"))
    labels = {"service": "lbp-patient-view", "hook": "patient-view", "status": "401"}
    before = value("lbp_requests_total", **labels)
    service_id, body = example_request(example("02"))
    assert app.test_client().post(f"/cds-services/{service_id}", json=body).status_code == 401
    assert value("lbp_requests_total", **labels) == before + 1


def test_calls_to_unknown_services_share_one_label(admin):
    before = value("lbp_requests_total", service="unknown", hook="unknown", status="404")
    admin.post(f"/cds-services/no-such-{uuid.uuid4().hex}", json={})
    assert value("lbp_requests_total", service="unknown", hook="unknown", status="404") == before + 1


def test_cards_are_counted_by_tier(admin):
    before = value("lbp_cards_total", service="lbp-patient-view", tier="emergency")
    service_id, body = example_request(example("02"))  # suspected metastatic cord compression
    admin.post(f"/cds-services/{service_id}", json=body)
    assert value("lbp_cards_total", service="lbp-patient-view", tier="emergency") == before + 1


def test_feedback_is_counted_by_outcome(admin):
    service_id, body = example_request(example("02"))
    card = admin.post(f"/cds-services/{service_id}", json=body).get_json()["cards"][0]
    before = value("lbp_feedback_total", service=service_id, outcome="accepted")
    calls_before = value("lbp_requests_total", service=service_id, hook="feedback", status="200")
    feedback = {"feedback": [{"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": "2025-01-01T00:00:00Z",
                              "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}]}]}
    response = admin.post(f"/cds-services/{service_id}/feedback", json=feedback)
    assert response.status_code == 200, response.get_json()
    assert value("lbp_feedback_total", service=service_id, outcome="accepted") == before + 1
    assert value("lbp_requests_total", service=service_id, hook="feedback", status="200") == calls_before + 1


def test_cards_the_audit_store_could_not_write_are_counted(admin_app):
    with admin_app.extensions["lbp_store"].engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE feedback_items")
        conn.exec_driver_sql("DROP TABLE issued_cards")
        conn.exec_driver_sql("DROP TABLE hook_calls")
    before = value("lbp_audit_rows_lost_total")
    service_id, body = example_request(example("02"))
    response = admin_app.test_client().post(f"/cds-services/{service_id}", json=body)
    assert response.status_code == 200, "the clinician still gets the cards"
    # the call's row and one row per card
    assert value("lbp_audit_rows_lost_total") == before + 1 + len(response.get_json()["cards"])


def test_unreachable_fhir_server_failures_are_counted_by_resource_type(admin):
    service_id, body = example_request(example("02"), with_prefetch=False)
    body["fhirServer"] = f"http://127.0.0.1:{free_port()}/fhir"  # nothing listens there
    before = value("lbp_fhir_fetch_failures_total", resource_type="Condition", reason="unreachable")
    response = admin.post(f"/cds-services/{service_id}", json=body)
    assert response.status_code == 412
    assert value("lbp_fhir_fetch_failures_total", resource_type="Condition", reason="unreachable") == before + 1
    assert value("lbp_fhir_fetch_failures_total", resource_type="Patient", reason="unreachable") >= 1


def test_fhir_fetch_latency_is_observed_by_resource_type(admin, fhir_server):
    chosen = example("02")
    fhir_server.load_transaction(load_file_bundle(chosen))
    service_id, body = example_request(chosen, with_prefetch=False)
    body["fhirServer"] = fhir_server.base_url.rstrip("/")
    before = value("lbp_fhir_fetch_duration_seconds_count", resource_type="Condition")
    response = admin.post(f"/cds-services/{service_id}", json=body)
    assert response.status_code == 200, response.get_json()
    assert value("lbp_fhir_fetch_duration_seconds_count", resource_type="Condition") == before + 1


def load_file_bundle(chosen: dict) -> dict:
    from cds_service.cli import EXAMPLES_DIR

    return load_file(EXAMPLES_DIR / chosen["file"], today())


# ---------------------------------------------------------------- the hook's deadline


@pytest.fixture(scope="module")
def hurried_service(start_service):
    """A hook deadline of 1.5 s (fetching stops 0.375 s before it); FHIR's own total timeout stays 20 s."""
    return start_service(hook_deadline_seconds="1.5", workers="1")


def fetch_mode_call(service, fault_proxy, fhir_server):
    chosen = example("02")
    fhir_server.load_transaction(load_file_bundle(chosen))
    patient_id = next(e["resource"]["id"] for e in chosen["bundle"]["entry"]
                      if e["resource"]["resourceType"] == "Patient")
    with EhrClient(service.base_url, fault_proxy.base_url) as ehr:
        started = time.monotonic()
        response = ehr.call("patient-view", {"patientId": patient_id}, prefetch="none")
        return response, time.monotonic() - started


def test_at_the_hook_deadline_the_service_answers_with_what_it_has(hurried_service, fault_proxy, fhir_server):
    fault_proxy.delay(r"/Observation\?", 8)
    response, elapsed = fetch_mode_call(hurried_service, fault_proxy, fhir_server)
    assert response.status_code == 200, response.text
    assert elapsed < 8, "the answer came only after the slow FHIR search: no deadline"
    ext = response.json()["cards"][0]["extension"]["lbp-redflags"]
    assert ext["tier"] == "emergency", "what arrived in time still decides the card"
    assert ext["dataComplete"] is False
    labs = [item for item in ext["unavailable"] if item.startswith("laboratory results")]
    assert labs and "timed out" in labs[0], ext["unavailable"]


def test_patient_not_fetched_by_the_hook_deadline_is_412(hurried_service, fault_proxy, fhir_server):
    fault_proxy.delay(r"/Patient/", 8)
    response, elapsed = fetch_mode_call(hurried_service, fault_proxy, fhir_server)
    assert response.status_code == 412, response.text
    assert elapsed < 8
    assert [d["field"] for d in response.json()["error"]["details"]] == ["prefetch.patient"]


# ---------------------------------------------------------------- through gunicorn: workers add up


@pytest.fixture(scope="module")
def metered_service(tmp_path_factory):
    from conftest import RunningService

    tmp = tmp_path_factory.mktemp("metered")
    (tmp / "tmp").mkdir()
    running = RunningService(tmp, {"LBP_ADMIN_TOKEN": TOKEN, "TMPDIR": str(tmp / "tmp")})
    running.tmpdir = tmp / "tmp"
    yield running
    running.stop()


def log_records(service) -> list[dict]:
    return [json.loads(line) for line in service.log().splitlines() if line.startswith("{")]


def scraped_total(running, name: str, **labels: str) -> float:
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{running.base_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def test_counts_add_up_across_gunicorn_workers(metered_service):
    from concurrent.futures import ThreadPoolExecutor

    labels = {"service": "lbp-patient-view", "hook": "patient-view", "status": "200"}
    service_id, body = example_request(example("02"))
    sent = 0
    deadline = time.monotonic() + 120
    with ThreadPoolExecutor(8) as pool:
        while True:  # until both workers have answered hook calls (the kernel picks which accepts)
            statuses = list(pool.map(lambda _: metered_service.post(service_id, body).status_code, range(16)))
            assert statuses == [200] * 16
            sent += 16
            pids = {r["pid"] for r in log_records(metered_service)
                    if r.get("logger") == "gunicorn.access" and f"POST /cds-services/{service_id}" in r["message"]}
            if len(pids) >= 2 or time.monotonic() > deadline:
                break
    assert len(pids) == 2, "both workers should have answered some calls"
    time.sleep(0.2)  # the last access lines are written after the answers
    for _ in range(6):  # whichever worker answers the scrape, it reports every worker's calls
        assert scraped_total(metered_service, "lbp_requests_total", **labels) == sent
        assert scraped_total(metered_service, "lbp_request_duration_seconds_count",
                             service="lbp-patient-view", hook="patient-view") == sent


def test_the_workers_metric_files_live_in_a_directory_the_service_owns(metered_service):
    directories = list(metered_service.tmpdir.glob("lbp-redflags-metrics-*"))
    assert len(directories) == 1 and any(directories[0].glob("counter_*.db"))


def test_logs_are_json_lines_with_the_hook_instance_and_no_patient_data(metered_service):
    service_id, body = example_request(example("02"))
    hook_instance = str(uuid.uuid4())
    body["hookInstance"] = hook_instance
    token = f"secret-{uuid.uuid4().hex}"
    body["fhirServer"] = "http://127.0.0.1:9/fhir"  # everything is prefetched: never called
    body["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                                 "scope": "patient/*.read", "subject": "lbp-redflags"}
    patient = body["prefetch"]["patient"]
    assert metered_service.post(service_id, body).status_code == 200
    deadline = time.monotonic() + 10
    while not any(r.get("hookInstance") == hook_instance for r in log_records(metered_service)):
        assert time.monotonic() < deadline, "no log record carries the hookInstance"
        time.sleep(0.1)
    log = metered_service.log()
    for line in log.splitlines():
        if not line.startswith("lbp-redflags: "):  # the start-up lines printed for the operator
            json.loads(line)
    names = [part for name in patient.get("name", []) for part in [*name.get("given", []), name.get("family", "")]]
    for secret in [token, patient["id"], *filter(None, names)]:
        assert secret not in log


def test_stopping_the_service_removes_its_metric_files(tmp_path):
    from conftest import RunningService

    (tmp_path / "tmp").mkdir()
    # A worker still booting when SIGTERM comes misses it; the master then waits graceful_timeout for it
    # before it exits and cleans up: keep that wait well inside the time the test gives the stop.
    running = RunningService(tmp_path, {"LBP_ADMIN_TOKEN": TOKEN, "TMPDIR": str(tmp_path / "tmp"),
                                        "LBP_GRACEFUL_TIMEOUT": "5"})
    assert list((tmp_path / "tmp").glob("lbp-redflags-metrics-*"))
    running.stop()
    assert not list((tmp_path / "tmp").glob("lbp-redflags-metrics-*"))
