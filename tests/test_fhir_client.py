"""FhirClient against a real FHIR R4 server (Medplum in memory, tests/fhir_server) over loopback sockets.

Faults are injected by a FaultProxy between the client and the server; it also records what the
client sent (headers, paths).
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from dataclasses import dataclass

import pytest
from fault_proxy import FaultProxy
from fhir_server_process import FhirServerError

from cds_service.fhir_client import FetchResult, FhirClient
from cds_service.settings import load_settings

pytest_plugins = ["fhir_fixtures"]

TOKEN = "tok-3f9a1c7e5b2d4a60"
OBSERVATIONS = 25


def make_settings(**overrides):
    values = {
        "fhir_connect_timeout": 1.0,
        "fhir_read_timeout": 3.0,
        "fhir_total_timeout": 8.0,
        "fhir_page_size": 10,
        "fhir_page_cap": 50,
        "fhir_max_retries": 1,
        "fhir_max_workers": 4,
    }
    values.update(overrides)
    return load_settings(env={}, **values)


@pytest.fixture
def make_client():
    clients: list[FhirClient] = []

    def make(**overrides) -> FhirClient:
        client = FhirClient(make_settings(**overrides))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@dataclass(frozen=True)
class Record:
    patient_id: str


@pytest.fixture(scope="module")
def record(fhir_server) -> Record:
    """One patient with 2 Conditions and 25 Observations, under ids no other test uses."""
    patient_id = f"pt-{uuid.uuid4().hex[:12]}"
    subject = {"reference": f"Patient/{patient_id}"}
    entries = [{"request": {"method": "PUT", "url": f"Patient/{patient_id}"},
                "resource": {"resourceType": "Patient", "id": patient_id, "birthDate": "1966-04-02"}}]
    for text in ("Low back pain", "Malignant neoplasm of breast"):
        condition = {"resourceType": "Condition", "subject": subject, "code": {"text": text}}
        entries.append({"request": {"method": "POST", "url": "Condition"}, "resource": condition})
    for index in range(OBSERVATIONS):
        entries.append({"request": {"method": "POST", "url": "Observation"},
                        "resource": {"resourceType": "Observation", "status": "final", "subject": subject,
                                     "code": {"text": "ESR"},
                                     "valueQuantity": {"value": 10 + index, "unit": "mm/h"}}})
    fhir_server.load_transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    return Record(patient_id)


def fetch_one(client: FhirClient, base_url: str, query: str, token: str | None = None) -> FetchResult:
    return client.fetch_all(base_url, {"key": query}, token)["key"]


def entries(result: FetchResult) -> list[dict]:
    return (result.resource or {}).get("entry", [])


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------- reads and searches


def test_reads_a_patient_by_id(make_client, fhir_server, record):
    result = fetch_one(make_client(), fhir_server.base_url, f"Patient/{record.patient_id}")
    assert result.ok and result.error is None and result.status == 200
    assert result.resource["resourceType"] == "Patient"
    assert result.resource["id"] == record.patient_id


def test_a_search_returns_one_searchset_bundle(make_client, fhir_server, record):
    result = fetch_one(make_client(), fhir_server.base_url, f"Condition?patient={record.patient_id}")
    assert result.ok
    assert result.resource["resourceType"] == "Bundle" and result.resource["type"] == "searchset"
    assert sorted(e["resource"]["code"]["text"] for e in entries(result)) == [
        "Low back pain", "Malignant neoplasm of breast"]


def test_a_base_url_without_trailing_slash_is_joined_correctly(make_client, fhir_server, record):
    base = fhir_server.base_url.rstrip("/")
    result = fetch_one(make_client(), base, f"/Patient/{record.patient_id}")
    assert result.ok and result.resource["id"] == record.patient_id


def test_fetch_all_returns_one_result_per_key(make_client, fhir_server, record):
    queries = {"patient": f"Patient/{record.patient_id}",
               "conditions": f"Condition?patient={record.patient_id}",
               "observations": f"Observation?patient={record.patient_id}"}
    results = make_client().fetch_all(fhir_server.base_url, queries, None)
    assert list(results) == list(queries)
    assert all(result.ok and result.key == key for key, result in results.items())


def test_keys_are_fetched_in_parallel(make_client, fault_proxy, record):
    fault_proxy.delay(r"/(Patient|Condition|Observation)\b", 1.0)
    queries = {"patient": f"Patient/{record.patient_id}",
               "conditions": f"Condition?patient={record.patient_id}",
               "observations": f"Observation?patient={record.patient_id}&_count=100"}
    started = time.monotonic()
    results = make_client(fhir_max_workers=3).fetch_all(fault_proxy.base_url, queries, None)
    assert all(result.ok for result in results.values())
    assert time.monotonic() - started < 2.5  # one after the other would take 3 s or more


def test_a_search_without_count_gets_the_configured_page_size(make_client, fault_proxy, record):
    fetch_one(make_client(fhir_page_size=7), fault_proxy.base_url, f"Condition?patient={record.patient_id}")
    assert "_count=7" in fault_proxy.requests[0].query


def test_a_search_keeps_its_own_count(make_client, fault_proxy, record):
    result = fetch_one(make_client(), fault_proxy.base_url,
                       f"Observation?patient={record.patient_id}&_count=13")
    assert result.ok and len(entries(result)) == OBSERVATIONS
    first_query = fault_proxy.requests[0].query
    assert first_query.count("_count=") == 1 and "_count=13" in first_query


# ------------------------------------------------------------------------------- paging


def test_next_links_are_followed_until_every_page_is_read(make_client, fhir_server, record):
    result = fetch_one(make_client(fhir_page_size=10), fhir_server.base_url,
                       f"Observation?patient={record.patient_id}")
    assert result.ok and not result.truncated
    assert result.pages == 3
    assert len(entries(result)) == OBSERVATIONS
    assert len({e["resource"]["id"] for e in entries(result)}) == OBSERVATIONS


def test_the_merged_bundle_has_no_paging_links(make_client, fhir_server, record):
    result = fetch_one(make_client(), fhir_server.base_url, f"Observation?patient={record.patient_id}")
    assert not any(link.get("relation") == "next" for link in result.resource.get("link", []))


def test_the_page_cap_truncates_a_search(make_client, fhir_server, record):
    result = fetch_one(make_client(fhir_page_size=10, fhir_page_cap=2), fhir_server.base_url,
                       f"Observation?patient={record.patient_id}")
    assert result.ok and result.truncated
    assert result.pages == 2
    assert len(entries(result)) == 20


def test_a_next_link_to_another_server_is_not_followed(make_client, fhir_server, fault_proxy, record):
    with FaultProxy(fhir_server.base_url) as elsewhere:
        fault_proxy.rewrite(r"/Observation\?", fault_proxy.origin, elsewhere.origin)
        result = fetch_one(make_client(), fault_proxy.base_url, f"Observation?patient={record.patient_id}",
                           TOKEN)
        assert elsewhere.requests == []
    assert result.ok and result.truncated
    assert result.pages == 1 and len(entries(result)) == 10


# ------------------------------------------------------------------------------- headers


def test_the_bearer_token_is_sent_when_given(make_client, fault_proxy, record):
    fetch_one(make_client(), fault_proxy.base_url, f"Patient/{record.patient_id}", TOKEN)
    assert fault_proxy.requests[0].headers.get("Authorization") == f"Bearer {TOKEN}"


def test_no_authorization_header_is_sent_without_a_token(make_client, fault_proxy, record):
    fetch_one(make_client(), fault_proxy.base_url, f"Patient/{record.patient_id}", None)
    assert "Authorization" not in fault_proxy.requests[0].headers


def test_every_page_asks_for_fhir_json_and_carries_the_token(make_client, fault_proxy, record):
    fetch_one(make_client(), fault_proxy.base_url, f"Observation?patient={record.patient_id}", TOKEN)
    assert len(fault_proxy.requests) == 3
    for request in fault_proxy.requests:
        assert request.headers.get("Accept") == "application/fhir+json"
        assert request.headers.get("Authorization") == f"Bearer {TOKEN}"


# ------------------------------------------------------------------------------- failures


@pytest.mark.parametrize("status", [401, 403])
def test_an_authorisation_error_fails_with_its_status(make_client, fault_proxy, record, status):
    fault_proxy.status(r"/Patient/", status)
    result = fetch_one(make_client(), fault_proxy.base_url, f"Patient/{record.patient_id}", TOKEN)
    assert not result.ok and result.status == status and result.resource is None
    assert str(status) in result.error


def test_a_server_error_fails_without_retrying(make_client, fault_proxy, record):
    fault_proxy.status(r"/Condition", 500)
    result = fetch_one(make_client(fhir_max_retries=2), fault_proxy.base_url,
                       f"Condition?patient={record.patient_id}")
    assert not result.ok and result.status == 500
    assert len(fault_proxy.requests) == 1


def test_a_503_with_retry_after_is_retried_and_then_succeeds(make_client, fault_proxy, record):
    fault_proxy.retry_after(r"/Condition", seconds=1, times=1)
    started = time.monotonic()
    result = fetch_one(make_client(fhir_max_retries=2), fault_proxy.base_url,
                       f"Condition?patient={record.patient_id}")
    assert result.ok and len(entries(result)) == 2
    assert len(fault_proxy.requests) == 2
    assert time.monotonic() - started >= 0.9  # Retry-After: 1 was honoured


def test_a_429_is_retried(make_client, fault_proxy, record):
    fault_proxy.retry_after(r"/Patient/", seconds=0, times=1, status=429)
    result = fetch_one(make_client(), fault_proxy.base_url, f"Patient/{record.patient_id}")
    assert result.ok and len(fault_proxy.requests) == 2


def test_retries_stop_after_the_configured_number(make_client, fault_proxy, record):
    fault_proxy.retry_after(r"/Patient/", seconds=0, times=100)
    result = fetch_one(make_client(fhir_max_retries=2), fault_proxy.base_url, f"Patient/{record.patient_id}")
    assert not result.ok and result.status == 503
    assert len(fault_proxy.requests) == 3


def test_a_retry_after_beyond_the_deadline_is_not_waited_for(make_client, fault_proxy, record):
    fault_proxy.retry_after(r"/Patient/", seconds=30, times=1)
    started = time.monotonic()
    result = fetch_one(make_client(fhir_total_timeout=3.0), fault_proxy.base_url,
                       f"Patient/{record.patient_id}")
    assert time.monotonic() - started < 1.5
    assert not result.ok and result.status == 503


def test_a_read_timeout_fails_as_timed_out(make_client, fault_proxy, record):
    fault_proxy.delay(r"/Patient/", 3.0)
    started = time.monotonic()
    result = fetch_one(make_client(fhir_read_timeout=0.5, fhir_total_timeout=5.0), fault_proxy.base_url,
                       f"Patient/{record.patient_id}")
    assert time.monotonic() - started < 1.5
    assert not result.ok and "timed out" in result.error


def test_the_total_deadline_bounds_the_whole_call(make_client, fault_proxy, record):
    fault_proxy.delay(r"/Condition", 5.0)
    started = time.monotonic()
    results = make_client(fhir_read_timeout=10.0, fhir_total_timeout=1.0).fetch_all(
        fault_proxy.base_url,
        {"slow": f"Condition?patient={record.patient_id}", "fast": f"Patient/{record.patient_id}"},
        None,
    )
    assert time.monotonic() - started < 1.6
    assert results["fast"].ok
    assert not results["slow"].ok and results["slow"].error == "timed out"


def test_an_operation_outcome_fails_with_its_diagnostics(make_client, fault_proxy, record):
    fault_proxy.operation_outcome(r"/Condition", "Search parameter 'onset-info' is not supported", status=200)
    result = fetch_one(make_client(), fault_proxy.base_url, f"Condition?patient={record.patient_id}")
    assert not result.ok and result.status == 200
    assert "Search parameter 'onset-info' is not supported" in result.error


def test_a_real_servers_operation_outcome_fails_with_its_status(make_client, fhir_server):
    result = fetch_one(make_client(), fhir_server.base_url, "Observation?date=not-a-date")
    assert not result.ok and result.status == 400
    assert "Invalid format for date search parameter" in result.error


def test_operation_outcome_diagnostics_do_not_repeat_patient_identifiers(make_client, fault_proxy, record):
    fault_proxy.operation_outcome(r"/Patient/", f"Resource Patient/{record.patient_id} is gone", status=410)
    result = fetch_one(make_client(), fault_proxy.base_url, f"Patient/{record.patient_id}")
    assert not result.ok and result.status == 410
    assert record.patient_id not in result.error and "is gone" in result.error


def test_a_missing_resource_fails_with_404(make_client, fhir_server):
    result = fetch_one(make_client(), fhir_server.base_url, f"Patient/missing-{uuid.uuid4().hex}")
    assert not result.ok and result.status == 404


def test_malformed_json_fails_as_malformed(make_client, fault_proxy, record):
    fault_proxy.malformed(r"/Condition")
    result = fetch_one(make_client(), fault_proxy.base_url, f"Condition?patient={record.patient_id}")
    assert not result.ok and "malformed response" in result.error


def test_json_that_is_not_a_fhir_resource_fails_as_malformed(make_client, fault_proxy, record):
    fault_proxy.respond(r"/Patient/", 200, {"hello": "world"})
    result = fetch_one(make_client(), fault_proxy.base_url, f"Patient/{record.patient_id}")
    assert not result.ok and "malformed response" in result.error


def test_a_search_answered_with_something_other_than_a_bundle_fails_as_malformed(make_client, fault_proxy,
                                                                                  record):
    fault_proxy.respond(r"/Condition", 200, {"resourceType": "Patient", "id": "x"})
    result = fetch_one(make_client(), fault_proxy.base_url, f"Condition?patient={record.patient_id}")
    assert not result.ok and "malformed response" in result.error


def test_a_failing_later_page_fails_the_key(make_client, fault_proxy, record):
    fault_proxy.status(r"_offset=10", 500)
    result = fetch_one(make_client(), fault_proxy.base_url, f"Observation?patient={record.patient_id}")
    assert not result.ok and result.status == 500 and result.resource is None
    assert result.error.startswith("page 2:")


def test_a_closed_port_fails_as_unreachable(make_client):
    result = fetch_one(make_client(fhir_max_retries=0), f"http://127.0.0.1:{unused_port()}/fhir/R4",
                       "Patient/p1")
    assert not result.ok and result.error == "unreachable" and result.status is None


def test_one_failing_key_does_not_affect_the_others(make_client, fault_proxy, record):
    fault_proxy.status(r"/Condition", 500)
    results = make_client().fetch_all(fault_proxy.base_url, {
        "patient": f"Patient/{record.patient_id}", "conditions": f"Condition?patient={record.patient_id}"},
        None)
    assert results["patient"].ok and not results["conditions"].ok


def test_a_token_search_with_a_system_uri_is_a_relative_query(make_client, fhir_server, record):
    result = fetch_one(make_client(), fhir_server.base_url,
                       f"Condition?patient={record.patient_id}&code=http://snomed.info/sct|279039007")
    assert result.ok and entries(result) == []


@pytest.mark.parametrize("query", ["../admin/Patient/p1", "Patient/%2E%2E/x", "//elsewhere.example/Patient"])
def test_a_query_that_would_leave_the_base_url_is_refused_without_a_request(make_client, fault_proxy, query):
    result = fetch_one(make_client(), fault_proxy.base_url, query, TOKEN)
    assert not result.ok and "invalid query" in result.error
    assert fault_proxy.requests == []


def test_an_absolute_url_query_is_refused_without_a_request(make_client, fault_proxy, fhir_server):
    result = fetch_one(make_client(), fault_proxy.base_url, fhir_server.base_url + "Patient/p1", TOKEN)
    assert not result.ok and "invalid query" in result.error
    assert fault_proxy.requests == []


def test_a_server_not_in_the_allow_list_is_not_contacted(make_client, fault_proxy, record):
    client = make_client(fhir_allowed_servers=("https://ehr.example.org/fhir",))
    result = fetch_one(client, fault_proxy.base_url, f"Patient/{record.patient_id}", TOKEN)
    assert not result.ok and result.error == "FHIR server not allowed"
    assert fault_proxy.requests == []


# ------------------------------------------------------------------------------- logging


def test_logs_never_contain_the_token_nor_patient_identifiers(make_client, fault_proxy, record, caplog):
    fault_proxy.retry_after(r"/Condition", seconds=0, times=1)
    fault_proxy.status(r"/Encounter", 401)
    fault_proxy.operation_outcome(r"/MedicationRequest", f"nothing for Patient/{record.patient_id}")
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="lbp_redflags")  # an app made by an earlier test may have raised it
    results = make_client().fetch_all(fault_proxy.base_url, {
        "patient": f"Patient/{record.patient_id}",
        "conditions": f"Condition?patient={record.patient_id}",
        "observations": f"Observation?patient={record.patient_id}",
        "encounters": f"Encounter?patient={record.patient_id}",
        "medications": f"MedicationRequest?patient={record.patient_id}",
    }, TOKEN)
    assert [r.ok for r in results.values()] == [True, True, True, False, False]
    unreachable = make_client(fhir_max_retries=1).fetch_all(
        f"http://127.0.0.1:{unused_port()}/fhir/R4", {"patient": f"Patient/{record.patient_id}"}, TOKEN)
    assert unreachable["patient"].error == "unreachable"
    assert any(r.name.startswith("urllib3") for r in caplog.records), "urllib3 DEBUG lines are captured too"
    assert TOKEN not in caplog.text
    assert record.patient_id not in caplog.text
    assert "key=observations type=Observation status=200 pages=3" in caplog.text


# ------------------------------------------------------------------------------- the test server itself


def test_the_test_server_pages_a_post_search_with_a_form_body(fhir_server, record):
    import requests

    response = requests.post(fhir_server.base_url + "Observation/_search",
                             data={"patient": record.patient_id, "_count": "10"}, timeout=10)
    bundle = response.json()
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    assert bundle["type"] == "searchset" and bundle["total"] == OBSERVATIONS and len(bundle["entry"]) == 10
    next_url = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
    assert "_offset=10" in next_url


def test_load_transaction_raises_when_an_entry_fails(fhir_server):
    bundle = {"resourceType": "Bundle", "type": "batch",
              "entry": [{"request": {"method": "GET", "url": f"Patient/missing-{uuid.uuid4().hex}"}}]}
    with pytest.raises(FhirServerError, match="entry 0"):
        fhir_server.load_transaction(bundle)


def test_a_next_page_url_under_the_base_is_fetched_as_given(fhir_server):
    from cds_service.fhir_client import FhirClient
    from cds_service.settings import load_settings

    client = FhirClient(load_settings(env={}, database_url="sqlite://"))
    url = f"{fhir_server.base_url.rstrip('/')}/Condition?patient=nobody&_count=5"
    result = client.fetch_all(fhir_server.base_url, {"conditions": url}, None)["conditions"]
    assert result.ok and result.resource["resourceType"] == "Bundle"
    client.close()


def test_an_absolute_url_outside_the_base_is_refused(fhir_server):
    from cds_service.fhir_client import FhirClient
    from cds_service.settings import load_settings

    client = FhirClient(load_settings(env={}, database_url="sqlite://"))
    result = client.fetch_all(fhir_server.base_url, {"conditions": "http://127.0.0.2:9/fhir/Condition"}, "t")
    assert not result["conditions"].ok and "invalid query" in result["conditions"].error
    client.close()
