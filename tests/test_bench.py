"""The benchmark's inputs are real hook requests (the benchmark itself runs by hand: ./bench/run)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from conftest import ROOT

from bench.baseline import app as baseline_app
from bench.hook_requests import HOOK_INSTANCE_MARK, body_for_wrk, fetch_request, prefetch_request
from bench.patients import as_transactions, patient_resources
from cds_service.validation import problems


def resource_counts(size: str) -> Counter:
    return Counter(r["resourceType"] for r in patient_resources(size))


def test_a_typical_patient_has_about_30_conditions_300_observations_and_20_encounters():
    counts = resource_counts("typical")
    assert counts["Condition"] == 30 and counts["Observation"] == 300 and counts["Encounter"] == 20


def test_a_large_patient_has_several_thousand_resources():
    assert sum(resource_counts("large").values()) >= 2000


def test_generated_patients_are_the_same_for_the_same_seed():
    assert patient_resources("small", seed=3) == patient_resources("small", seed=3)


@pytest.mark.parametrize("size", ["small", "typical"])
def test_prefetch_requests_are_valid_and_reach_an_imaging_card(client, size):
    service_id, body = prefetch_request(size)
    assert problems("request", body) == []
    response = client.post(f"/cds-services/{service_id}", json=body)
    assert response.status_code == 200, response.get_json()
    tiers = [c["extension"]["lbp-redflags"]["tier"] for c in response.get_json()["cards"]]
    assert tiers == ["imaging"], "low back pain with a history of prostate cancer"


def test_the_prefetch_carries_every_generated_observation_the_template_asks_for():
    _service_id, body = prefetch_request("typical")
    sent = len(body["prefetch"]["allObservations"]["entry"])  # every Observation, whatever its category
    assert sent == resource_counts("typical")["Observation"]


def test_the_wrk_body_has_one_hook_instance_placeholder_that_the_script_knows():
    _service_id, body = prefetch_request("small")
    payload = body_for_wrk(body)
    assert payload.count(HOOK_INSTANCE_MARK.encode()) == 1
    assert f'"{HOOK_INSTANCE_MARK}"' in (ROOT / "bench" / "post.lua").read_text()
    renewed = json.loads(payload.replace(HOOK_INSTANCE_MARK.encode(), b"0d3c1b2a-0000-4abc-8def-000000000001"))
    assert renewed["hookInstance"] == "0d3c1b2a-0000-4abc-8def-000000000001"


def test_the_baseline_parses_the_body_and_returns_no_cards():
    _service_id, body = prefetch_request("small")
    response = baseline_app.test_client().post("/cds-services/lbp-patient-view", data=body_for_wrk(body),
                                               content_type="application/json")
    assert response.status_code == 200 and response.get_json() == {"cards": []}


def test_fetch_requests_find_the_patient_loaded_into_a_fhir_server(client, fhir_server):
    for bundle in as_transactions(patient_resources("small")):
        fhir_server.load_transaction(bundle)
    service_id, body = fetch_request("small", fhir_server.base_url)
    assert "prefetch" not in body and problems("request", body) == []
    response = client.post(f"/cds-services/{service_id}", json=body)
    assert response.status_code == 200, response.get_json()
    ext = response.get_json()["cards"][0]["extension"]["lbp-redflags"]
    assert ext["tier"] == "imaging" and ext["dataComplete"] is True
