"""Prefetch semantics of CDS Hooks 2.0: absent = not provided, null = no data, OperationOutcome = error."""

import pytest

from cds_service.errors import ServiceError
from cds_service.prefetch import gather

PATIENT = {"resourceType": "Patient", "id": "p1"}
EMPTY = {"resourceType": "Bundle", "type": "searchset", "entry": []}
ALL_NULL = {"conditions": None, "observations": None, "examObservations": None, "encounters": None,
            "procedures": None, "medications": None, "activeServiceRequests": None}


def body(prefetch, **extra):
    return {"hook": "patient-view", "hookInstance": "h", "context": {"userId": "Practitioner/1", "patientId": "p1"},
            "prefetch": prefetch, **extra}


class Fetcher:
    """Stands in for the EHR's FHIR server in these unit tests (the real server is used in the integration tests)."""

    def __init__(self, results):
        self.results, self.asked = results, {}

    def __call__(self, base, queries, token):
        self.asked = dict(queries)
        return {k: self.results[k] for k in queries if k in self.results}


class Result:
    def __init__(self, resource=None, ok=True, error=None, truncated=False):
        self.resource, self.ok, self.error, self.truncated = resource, ok, error, truncated


def test_null_means_no_data_and_is_not_reported_missing():
    gathered = gather(body({"patient": PATIENT, **ALL_NULL}))
    assert gathered.unavailable == [] and gathered.resources == [PATIENT]


def test_absent_optional_keys_without_fhir_server_are_reported_missing():
    gathered = gather(body({"patient": PATIENT, "conditions": EMPTY}))
    assert len(gathered.unavailable) == 6
    assert any(item.startswith("labs, vital signs and smoking status") for item in gathered.unavailable)


def test_absent_keys_are_fetched_from_the_fhir_server_with_the_context_filled_in():
    fetcher = Fetcher({"observations": Result(EMPTY)})
    gather(body({"patient": PATIENT, "conditions": EMPTY}, fhirServer="http://127.0.0.1:1/fhir"), fetcher)
    assert fetcher.asked["observations"].startswith("Observation?patient=p1&code=")
    assert set(fetcher.asked) == {"observations", "examObservations", "encounters", "procedures", "medications",
                                  "activeServiceRequests"}


def test_operation_outcome_in_a_slot_is_fetched_again_when_a_server_is_given():
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    fetcher = Fetcher({"conditions": Result(EMPTY)})
    gather(body({"patient": PATIENT, **ALL_NULL, "conditions": outcome}, fhirServer="http://127.0.0.1:1/fhir"),
           fetcher)
    assert fetcher.asked == {"conditions": "Condition?patient=p1"}


def test_next_page_of_a_paginated_prefetch_bundle_is_fetched_from_the_same_server():
    paged = dict(EMPTY, link=[{"relation": "next", "url": "http://127.0.0.1:1/fhir/Condition?patient=p1&_offset=50"}])
    fetcher = Fetcher({"conditions": Result(EMPTY)})
    gather(body({"patient": PATIENT, **ALL_NULL, "conditions": paged}, fhirServer="http://127.0.0.1:1/fhir"),
           fetcher)
    assert fetcher.asked == {"conditions": "http://127.0.0.1:1/fhir/Condition?patient=p1&_offset=50"}


def test_a_server_made_next_link_at_the_base_url_is_followed():
    paged = dict(EMPTY, link=[{"relation": "next", "url": "http://127.0.0.1:1/fhir?_getpages=abc&_getpagesoffset=50"}])
    fetcher = Fetcher({"conditions": Result(EMPTY)})
    gather(body({"patient": PATIENT, **ALL_NULL, "conditions": paged}, fhirServer="http://127.0.0.1:1/fhir"),
           fetcher)
    assert fetcher.asked == {"conditions": "http://127.0.0.1:1/fhir?_getpages=abc&_getpagesoffset=50"}


def test_next_page_on_another_host_is_not_followed():
    paged = dict(EMPTY, link=[{"relation": "next", "url": "https://elsewhere.example/fhir/Condition?page=2"}])
    fetcher = Fetcher({})
    gathered = gather(body({"patient": PATIENT, **ALL_NULL, "conditions": paged},
                           fhirServer="http://127.0.0.1:1/fhir"), fetcher)
    assert fetcher.asked == {}
    assert any("first page" in item for item in gathered.unavailable)


def test_failed_required_fetch_is_412_naming_the_key():
    fetcher = Fetcher({"conditions": Result(ok=False, error="HTTP 401 (not authorised)")})
    with pytest.raises(ServiceError) as raised:
        gather(body({"patient": PATIENT}, fhirServer="http://127.0.0.1:1/fhir"), fetcher)
    assert raised.value.status == 412
    assert raised.value.details == [{"field": "prefetch.conditions", "reason": "HTTP 401 (not authorised)"}]


def test_unreadable_bundle_entries_make_the_data_incomplete():
    bundle = dict(EMPTY, entry=[1, {"resource": "x"}, {"resource": {"resourceType": "Condition", "id": "c"}}])
    gathered = gather(body({"patient": PATIENT, **ALL_NULL, "conditions": bundle}))
    assert any("2 unreadable entries" in item for item in gathered.unavailable)
    assert {"resourceType": "Condition", "id": "c"} in gathered.resources


def test_truncated_fetch_of_conditions_is_reported_but_not_412():
    fetcher = Fetcher({"conditions": Result(EMPTY, truncated=True)})
    gathered = gather(body({"patient": PATIENT, **{k: v for k, v in ALL_NULL.items() if k != "conditions"}},
                           fhirServer="http://127.0.0.1:1/fhir"), fetcher)
    assert any("page limit" in item for item in gathered.unavailable)


def test_conditions_that_came_but_could_not_be_read_are_412():
    bundle = dict(EMPTY, entry=[1, "x", {"resource": "y"}])
    with pytest.raises(ServiceError) as raised:
        gather(body({"patient": PATIENT, **ALL_NULL, "conditions": bundle}))
    assert raised.value.status == 412
