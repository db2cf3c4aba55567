"""The FHIR fallback end to end, through real sockets: EHR client -> service (gunicorn) -> FHIR server.

The patients of a subset of tests/cases are stored in the Medplum test server (tests/fhir_server)
under ids unique to this run; an EHR-like client (tests/ehr_client.py) reads the service's
discovery document and resolves its prefetch templates against that server, as an EHR would. The
service is called with that prefetch, with part of it, or with none (it then reads the FHIR server
itself), and faults are injected by the FaultProxy (tests/fault_proxy.py) between the service and
the FHIR server, which also records what the service sent.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import case_files
import pytest
import requests
from conftest import SPEC, today
from ehr_client import EhrClient
from fault_proxy import operation_outcome_body

from cds_service.services import SLICED_KEYS, SLICES, fetch_queries, fetch_query, prefetch_templates

pytest_plugins = ["fhir_fixtures"]

CASES_DIR = Path(__file__).parent / "cases"
HOOKS = ("patient-view", "encounter-start", "order-select", "order-sign")
ORDER_HOOKS = ("order-select", "order-sign")
# One emergency (with an Encounter), one emergency found only in an exam Observation, one imaging
# (Encounter, MedicationRequest, Procedure), one consider (two Observations), one with no card, and
# every order case.
SELECTED_CASES = ("02", "06", "23", "46", "64", *(str(n) for n in range(71, 81)))
# Every record shape of issue 11 (survey answers, panels, onset ages, medications by reference,
# statements and administrations, CPT/HCPCS procedures, same-day encounters), each in its own hook,
# and every case with clinical notes and reports (issue 12, cases 220-269).
RECORD_SHAPE_CASES = tuple(sorted(p.name.split("-", 1)[0] for p in CASES_DIR.glob("*.json")
                                  if 111 <= int(p.name.split("-", 1)[0]) <= 149
                                  or 220 <= int(p.name.split("-", 1)[0]) <= 269))
OPTIONAL_KEYS = ("labs", "vitalSigns", "socialHistory", "survey", "examObservations", "encounters", "procedures",
                 "medications", "medicationStatements", "medicationAdministrations", "activeServiceRequests",
                 "clinicalNotes", "diagnosticReports", "allObservations")
ALL_TYPES = {"Patient", "Condition", "Observation", "Encounter", "Procedure", "MedicationRequest",
             "MedicationStatement", "MedicationAdministration", "ServiceRequest", "DocumentReference",
             "DiagnosticReport"}
# requests of one call in fetch mode (no Medication to read, every slice one page)
SEARCHES = 2 + len(OPTIONAL_KEYS) + len(SLICED_KEYS) * (SLICES - 1)
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
MAX_TRANSACTION_UPDATES = 50   # Medplum refuses transactions with more updates than this
RUN = f"r{uuid.uuid4().hex[:6]}"   # every id stored in the (session-wide) FHIR server starts with it


# ---------------------------------------------------------------------------- ids unique to this run


def _case_path(number: str) -> Path:
    matches = sorted(CASES_DIR.glob(f"{number}-*.json"))
    assert len(matches) == 1, f"expected one case file numbered {number}, found {matches}"
    return matches[0]


def _rewrite_references(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: (ids.get(v, v) if k == "reference" and isinstance(v, str) else _rewrite_references(v, ids))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite_references(v, ids) for v in value]
    return value


def with_run_ids(case: dict, prefix: str) -> dict:
    """The case with every resource id (and every reference to it) prefixed with `prefix-`.

    draftOrders, selections and encounterId are rewritten the same way.
    """
    resources = case["resources"]
    orders = case.get("draftOrders") or []
    ids = {f"{r['resourceType']}/{r['id']}": f"{r['resourceType']}/{prefix}-{r['id']}"
           for r in [*resources, *orders]}

    def renamed(resource: dict) -> dict:
        return _rewrite_references({**resource, "id": f"{prefix}-{resource['id']}"}, ids)

    out = {**case, "resources": [renamed(r) for r in resources], "draftOrders": [renamed(r) for r in orders]}
    if case.get("selections"):
        out["selections"] = [ids.get(s, s) for s in case["selections"]]
    if case.get("encounterId"):
        out["encounterId"] = f"{prefix}-{case['encounterId']}"
    return out


def transaction(resources: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "transaction",
            "entry": [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                      for r in resources]}


def lumbar_mri_order(prefix: str, patient_id: str) -> dict:
    """A draft MRI lumbar spine for the order hooks of cases that come without draft orders."""
    return {
        "resourceType": "ServiceRequest", "id": f"{prefix}-sr-mri", "status": "draft", "intent": "order",
        "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "72148"},
                            {"system": LOINC, "code": "30679-5", "display": "MR Lumbar spine WO contrast"}],
                 "text": "MRI lumbar spine without contrast"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": today().isoformat(),
    }


@dataclass(frozen=True)
class StoredCase:
    """A case whose resources are in the FHIR server, under this run's ids."""

    name: str
    case: dict
    patient_id: str
    draft_orders: tuple[dict, ...]
    selections: tuple[str, ...]

    def context(self, hook: str) -> dict:
        context: dict[str, Any] = {"patientId": self.patient_id}
        if self.case.get("encounterId"):
            context["encounterId"] = self.case["encounterId"]
        elif hook == "encounter-start":
            context["encounterId"] = f"{self.patient_id}-visit"   # no Encounter resource: still valid
        if hook in ORDER_HOOKS:
            context["draftOrders"] = {"resourceType": "Bundle", "type": "collection",
                                      "entry": [{"resource": r} for r in self.draft_orders]}
        if hook == "order-select":
            context["selections"] = list(self.selections)
        return context


def store_case(fhir_server, number: str) -> StoredCase:
    path = _case_path(number)
    prefix = f"{RUN}-{number}"
    case = with_run_ids(case_files.load_case(path, today()), prefix)
    fhir_server.load_transaction(transaction(case["resources"]))
    patient_id = next(r["id"] for r in case["resources"] if r["resourceType"] == "Patient")
    orders = case["draftOrders"] or [lumbar_mri_order(prefix, patient_id)]
    selections = case.get("selections") or [f"ServiceRequest/{r['id']}" for r in orders]
    return StoredCase(path.stem, case, patient_id, tuple(orders), tuple(selections))


def temperature_patient(name: str, normal: int) -> list[dict]:
    """A patient with LBP, `normal` normal body temperatures, then (last) one of 38.6 °C: `<prefix>-fever`."""
    prefix = f"{RUN}-{name}"
    patient_id = f"{prefix}-pat"
    subject = {"reference": f"Patient/{patient_id}"}
    day = today()
    resources: list[dict] = [
        {"resourceType": "Patient", "id": patient_id, "gender": "female",
         "birthDate": (day - timedelta(days=36 * 365)).isoformat()},
        {"resourceType": "Condition", "id": f"{prefix}-lbp", "subject": subject,
         "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                        "code": "active"}]},
         "verificationStatus": {"coding": [{
             "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
         "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "M54.50",
                              "display": "Low back pain, unspecified"}], "text": "Low back pain"},
         "onsetDateTime": (day - timedelta(days=12)).isoformat()},
    ]

    def temperature(ident: str, value: float, when: str) -> dict:
        return {"resourceType": "Observation", "id": ident, "status": "final", "subject": subject,
                "category": [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "vital-signs"}]}],
                "code": {"coding": [{"system": LOINC, "code": "8310-5", "display": "Body temperature"}]},
                "effectiveDateTime": when,
                "valueQuantity": {"value": value, "unit": "°C", "system": UCUM, "code": "Cel"}}

    for index in range(normal):
        when = f"{(day - timedelta(days=10 + index % 150)).isoformat()}T{index % 24:02d}:00:00Z"
        resources.append(temperature(f"{prefix}-t{index}", 36.7, when))
    fever_time = f"{(day - timedelta(days=2)).isoformat()}T08:30:00Z"
    resources.append(temperature(f"{prefix}-fever", 38.6, fever_time))
    return resources


def in_transactions(fhir_server, entries: list[dict]) -> None:
    for start in range(0, len(entries), MAX_TRANSACTION_UPDATES):
        fhir_server.load_transaction({"resourceType": "Bundle", "type": "transaction",
                                      "entry": entries[start:start + MAX_TRANSACTION_UPDATES]})


# ---------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def stored_cases(fhir_server) -> dict[str, StoredCase]:
    return {number: store_case(fhir_server, number) for number in SELECTED_CASES}


@pytest.fixture
def temperature_patients(fhir_server):
    """store(name, normal) -> (patient id, febrile Observation id); removed again after the test.

    The in-memory server scans every stored resource of a type on each search, so hundreds of
    Observations left behind would slow every later Observation search of the session.
    """
    stored: list[dict] = []

    def store(name: str, normal: int) -> tuple[str, str]:
        resources = temperature_patient(f"{name}-{uuid.uuid4().hex[:4]}", normal)
        in_transactions(fhir_server, transaction(resources)["entry"])
        stored.extend(resources)
        return resources[0]["id"], resources[-1]["id"]

    yield store
    in_transactions(fhir_server, [{"request": {"method": "DELETE", "url": f"{r['resourceType']}/{r['id']}"}}
                                  for r in reversed(stored)])


@pytest.fixture(scope="module")
def ehr(service, fhir_server):
    """An EHR reading the FHIR server directly (its prefetch does not go through the proxy)."""
    with EhrClient(service.base_url, fhir_server.base_url) as client:
        yield client


@pytest.fixture
def ehr_via_proxy(service, fault_proxy):
    """An EHR whose fhirServer (and own reads) go through the fault proxy."""
    with EhrClient(service.base_url, fault_proxy.base_url) as client:
        yield client


def ok_json(response: requests.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def full_prefetch_both_ways(ehr: EhrClient, ehr_via_proxy: EhrClient, stored: StoredCase) -> tuple[dict, str, dict]:
    """patient-view with full prefetch and no fhirServer (its answer), and the same request, not yet
    sent, with full prefetch and the fault proxy as fhirServer: (answer, service id, request body)."""
    hook_instance = str(uuid.uuid4())
    context = stored.context("patient-view")
    full = ok_json(ehr.call("patient-view", context, prefetch="full", fhir_server_in_request=False,
                            hook_instance=hook_instance))
    service_id, body = ehr_via_proxy.build_request("patient-view", context, prefetch="full",
                                                   hook_instance=hook_instance)
    return full, service_id, body


def the_card(result: dict) -> dict:
    assert len(result["cards"]) == 1, result["cards"]
    return result["cards"][0]


def card_extension(result: dict) -> dict:
    return the_card(result)["extension"]["lbp-redflags"]


def unavailable_about(ext: dict, description_start: str) -> list[str]:
    return [item for item in ext.get("unavailable", []) if item.startswith(description_start)]


def requested_type(request) -> str:
    """The resource type a request to the FHIR base asked for (`/fhir/R4/Patient/1` -> Patient)."""
    return request.path.split("/fhir/R4/", 1)[1].split("/", 1)[0]


def requested_types(proxy) -> set[str]:
    return {requested_type(r) for r in proxy.requests}


def log_after(running_service, since: int, text: str, timeout: float = 5.0) -> str:
    """The service's log from offset `since` on, once that part mentions `text` (or after `timeout`).

    The log is written by the gunicorn processes; the access line of a call comes after its answer.
    """
    deadline = time.monotonic() + timeout
    while True:
        log = running_service.log()[since:]
        if text in log or time.monotonic() > deadline:
            return log
        time.sleep(0.05)


# ---------------------------------------------------------------------------- prefetch vs fetch


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("number", SELECTED_CASES, ids=lambda n: _case_path(n).stem)
def test_cards_are_identical_whether_the_ehr_prefetches_or_the_service_fetches(
        ehr, ehr_via_proxy, fault_proxy, stored_cases, number, hook):
    stored = stored_cases[number]
    hook_instance = str(uuid.uuid4())
    context = stored.context(hook)

    service_id, prefetched = ehr.build_request(hook, context, prefetch="full", fhir_server_in_request=False,
                                               hook_instance=hook_instance)
    assert set(prefetched["prefetch"]) == {"patient", "conditions", *OPTIONAL_KEYS}
    with_prefetch = ok_json(ehr.post(service_id, prefetched))

    fetched = ok_json(ehr_via_proxy.call(hook, context, prefetch="none", fhir_server_in_request=True,
                                         hook_instance=hook_instance))

    assert requested_types(fault_proxy) == ALL_TYPES, "the service did not fetch every key itself"
    assert fetched == with_prefetch
    if hook == stored.case["hook"]:   # and the answer is the case's, so the comparison is not vacuous
        tiers = [card["extension"]["lbp-redflags"]["tier"] for card in fetched["cards"]]
        expected = stored.case["expect"]["tier"]
        assert tiers == ([expected] if expected else []), stored.name


def test_partial_prefetch_gives_the_same_cards_as_full_prefetch(ehr, ehr_via_proxy, fault_proxy,
                                                                stored_cases):
    for number in ("02", "06", "23", "46", "75", "80"):
        stored = stored_cases[number]
        hook = stored.case["hook"]
        hook_instance = str(uuid.uuid4())
        context = stored.context(hook)
        full = ok_json(ehr.call(hook, context, prefetch="full", fhir_server_in_request=False,
                                hook_instance=hook_instance))
        service_id, body = ehr_via_proxy.build_request(hook, context, prefetch=OPTIONAL_KEYS,
                                                       fhir_server_in_request=True,
                                                       hook_instance=hook_instance)
        assert set(body["prefetch"]) == {"patient", "conditions"}
        fault_proxy.clear_requests()   # what the EHR read to build the prefetch
        partial = ok_json(ehr_via_proxy.post(service_id, body))
        assert partial == full, stored.name
        assert requested_types(fault_proxy) == ALL_TYPES - {"Patient", "Condition"}, stored.name


# ---------------------------------------------------------------------------- record shapes (issue 11)


@pytest.fixture(scope="module")
def stored_shape_cases(fhir_server) -> dict[str, StoredCase]:
    return {number: store_case(fhir_server, number) for number in RECORD_SHAPE_CASES}


def _run_ids(texts: list[str], stored: StoredCase) -> list[str]:
    """Expected card texts with the case's resource ids as stored in this run."""
    prefix = stored.patient_id.rsplit("-", 1)[0]
    originals = {r["id"].removeprefix(prefix + "-") for r in stored.case["resources"]}
    return [re.sub(r"\b([A-Z][A-Za-z]+)/([\w.\-]+)",
                   lambda m: f"{m[1]}/{prefix}-{m[2]}" if m[2] in originals else m[0], text) for text in texts]


@pytest.mark.parametrize("number", RECORD_SHAPE_CASES, ids=lambda n: _case_path(n).stem)
def test_every_record_shape_is_read_alike_from_prefetch_and_from_the_fhir_server(
        ehr, ehr_via_proxy, fault_proxy, stored_shape_cases, number):
    stored = stored_shape_cases[number]
    hook = stored.case["hook"]
    hook_instance = str(uuid.uuid4())
    context = stored.context(hook)
    service_id, prefetched = ehr.build_request(hook, context, prefetch="full", fhir_server_in_request=False,
                                               hook_instance=hook_instance)
    with_prefetch = ok_json(ehr.post(service_id, prefetched))
    fetched = ok_json(ehr_via_proxy.call(hook, context, prefetch="none", hook_instance=hook_instance))

    assert requested_types(fault_proxy) >= ALL_TYPES, "the service did not fetch every key itself"
    assert fetched == with_prefetch
    expect = stored.case["expect"]
    tiers = [card["extension"]["lbp-redflags"]["tier"] for card in fetched["cards"]]
    assert tiers == ([expect["tier"]] if expect["tier"] else []), stored.name
    if not expect["tier"]:
        return
    ext = card_extension(fetched)
    assert set(expect.get("redFlagsInclude", [])) <= set(ext["redFlags"]), ext["redFlags"]
    assert not set(expect.get("redFlagsExclude", [])) & set(ext["redFlags"]), ext["redFlags"]
    for text in _run_ids(expect.get("unavailableInclude", []), stored):
        assert any(item.startswith(text) for item in ext.get("unavailable", [])), ext.get("unavailable")
        assert text in the_card(fetched)["detail"]
    for text in expect.get("evidenceValueInclude", []) + expect.get("detailIncludes", []):
        assert text in the_card(fetched)["detail"]
    for text in expect.get("detailExcludes", []):
        assert text not in the_card(fetched)["detail"]


def test_the_fhir_server_answers_every_search_the_service_sends_as_a_us_core_server_would(fhir_server):
    """The in-memory server must honour category, date, _sort, intent and _include, or the
    prefetch-versus-fetch comparisons above would pass on a server that ignores them."""
    prefix = f"{RUN}-search"
    subject = {"reference": f"Patient/{prefix}-pat"}

    def observation(ident: str, category: str | None, when: str) -> dict:
        resource = {"resourceType": "Observation", "id": f"{prefix}-{ident}", "status": "final", "subject": subject,
                    "code": {"text": ident}, "effectiveDateTime": when}
        if category:
            resource["category"] = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                                 "code": category}]}]
        return resource

    day = today()
    resources = [
        {"resourceType": "Patient", "id": f"{prefix}-pat"},
        observation("lab-new", "laboratory", (day - timedelta(days=3)).isoformat()),
        observation("lab-old", "laboratory", (day - timedelta(days=900)).isoformat()),
        observation("survey", "survey", (day - timedelta(days=1)).isoformat()),
        observation("bare", None, (day - timedelta(days=2)).isoformat()),
        observation("boundary", None, f"{(day - timedelta(days=365)).isoformat()}T12:00:00Z"),   # a slice edge
        {"resourceType": "Medication", "id": f"{prefix}-med", "code": {"text": "tamoxifen"}},
        {"resourceType": "MedicationRequest", "id": f"{prefix}-mr", "status": "active", "intent": "plan",
         "subject": subject, "medicationReference": {"reference": f"Medication/{prefix}-med"}},
        {"resourceType": "MedicationAdministration", "id": f"{prefix}-ma", "status": "completed", "subject": subject,
         "medicationReference": {"reference": f"Medication/{prefix}-med"},
         "effectiveDateTime": (day - timedelta(days=4000)).isoformat()},
    ]
    fhir_server.load_transaction(transaction(resources))
    context = {"patientId": f"{prefix}-pat"}

    def ids(key: str, query: str | None = None) -> list[tuple[str, str]]:
        query = query or fetch_query(key, prefetch_templates()[key], context, day)
        bundle = requests.get(fhir_server.base_url + query, timeout=10).json()
        assert bundle["resourceType"] == "Bundle", bundle
        return [(e["resource"]["id"].removeprefix(prefix + "-"), e["search"]["mode"]) for e in bundle["entry"]] \
            if bundle.get("entry") else []

    assert ids("labs") == [("lab-new", "match")]                       # category and date=ge
    assert ids("survey") == [("survey", "match")]
    assert ids("allObservations") == [("survey", "match"), ("bare", "match"), ("lab-new", "match"),
                                      ("boundary", "match")]           # newest first
    slices = fetch_queries("allObservations", prefetch_templates()["allObservations"], context, day)
    assert [i for query in slices for i in ids("allObservations", query)] == ids("allObservations")
    assert ids("medications") == [("mr", "match"), ("med", "include")]  # intent and _include
    assert ids("medicationAdministrations") == [("ma", "match"), ("med", "include")]   # no date window


def test_observations_without_category_refused_by_the_server_are_not_checked(ehr_via_proxy, fault_proxy,
                                                                             stored_shape_cases):
    # Like Epic: Observation?patient= without category or code is refused. The new retention typed into
    # an uncategorised flowsheet row cannot be seen, and the card says what was not checked.
    fault_proxy.operation_outcome(r"/Observation\?patient=[^&]+&date=", "category or code is required", status=400)
    response = fetch_mode(ehr_via_proxy, stored_shape_cases["113"])
    card = the_card(ok_json(response))
    ext = card["extension"]["lbp-redflags"]
    assert ext["tier"] == "none" and ext["dataComplete"] is False
    [item] = unavailable_about(ext, "observations without a category")
    assert "not checked" in item and "HTTP 400" in item
    assert item in card["detail"]
    assert not unavailable_about(ext, "laboratory results")


def test_an_ehr_that_runs_no_search_without_category_leaves_the_service_to_fetch_it(
        service, fault_proxy, stored_shape_cases):
    stored = stored_shape_cases["113"]
    with EhrClient(service.base_url, fault_proxy.base_url, observation_needs_category=True) as ehr:
        service_id, body = ehr.build_request("patient-view", stored.context("patient-view"), prefetch="full")
        assert "allObservations" not in body["prefetch"] and "survey" in body["prefetch"]
        fault_proxy.clear_requests()
        ext = card_extension(ok_json(ehr.post(service_id, body)))
    assert ext["tier"] == "emergency"
    sent = fetch_queries("allObservations", prefetch_templates()["allObservations"],
                         {"patientId": stored.patient_id}, today())
    assert len(sent) > 1 and all("category" not in query for query in sent)
    assert sorted(unquote(r.query) for r in fault_proxy.requests) == sorted(   # sent in parallel
        query.split("?", 1)[1] + "&_count=200" for query in sent)


def test_a_medication_the_prefetch_did_not_include_is_read_in_a_second_round(ehr, ehr_via_proxy, fault_proxy,
                                                                              stored_shape_cases):
    full, service_id, body = full_prefetch_both_ways(ehr, ehr_via_proxy, stored_shape_cases["135"])
    medications = body["prefetch"]["medications"]
    medications["entry"] = [e for e in medications["entry"] if e["resource"]["resourceType"] != "Medication"]
    fault_proxy.clear_requests()
    second_round = ok_json(ehr_via_proxy.post(service_id, body))
    assert [r.path.rsplit("/", 2)[-2] for r in fault_proxy.requests] == ["Medication"]
    assert second_round == full
    assert "cancer-history" in card_extension(full)["redFlags"]


def test_a_medication_the_server_cannot_return_is_named_not_read(ehr_via_proxy, fault_proxy, stored_shape_cases):
    stored = stored_shape_cases["135"]
    fault_proxy.status(r"/Medication/", 404)
    fault_proxy.rewrite(r"/MedicationRequest\?", "include", "outcome")  # the server's _include is lost
    ext = card_extension(ok_json(fetch_mode(ehr_via_proxy, stored)))
    assert "cancer-history" not in ext["redFlags"]
    assert any(item.startswith(f"MedicationRequest/{stored.patient_id.rsplit('-', 1)[0]}-mr1: its Medication")
               for item in ext["unavailable"]), ext["unavailable"]


# ---------------------------------------------------------------------------- paging


SMALL_PAGE = 10
PAGE_CAP = 5


@pytest.fixture(scope="module")
def small_page_service(start_service):
    """A service that reads searches 10 entries a page and follows at most 5 pages."""
    return start_service(fhir_page_size=str(SMALL_PAGE), fhir_page_cap=str(PAGE_CAP), workers="1")


def febrile_on_the_last_page(temperature_patients, ehr: EhrClient, pages: int) -> tuple[str, str]:
    """A patient whose temperatures fill `pages` pages of SMALL_PAGE; the febrile one is the very last."""
    patient_id, fever_id = temperature_patients("paging", pages * SMALL_PAGE - 1)
    query = f"Observation?patient={patient_id}&code={LOINC}|8310-5&_count={SMALL_PAGE}"
    first = ehr.read(query).json()
    last = ehr.read(f"{query}&_offset={(pages - 1) * SMALL_PAGE}").json()
    assert first["total"] == pages * SMALL_PAGE
    assert fever_id not in {e["resource"]["id"] for e in first["entry"]}
    assert fever_id in {e["resource"]["id"] for e in last["entry"]}, "the fever is not on the last page"
    return patient_id, fever_id


def temperature_searches(proxy) -> list:
    """The requests of the newest date slice of the `vitalSigns` key, where every temperature is."""
    return [r for r in proxy.requests_to(r"/Observation\?")
            if "category=vital-signs" in unquote(r.query) and "date=lt" not in unquote(r.query)]


def test_service_follows_next_links_and_finds_a_flag_on_the_last_page(
        small_page_service, fault_proxy, temperature_patients, ehr):
    patient_id, fever_id = febrile_on_the_last_page(temperature_patients, ehr, pages=PAGE_CAP)
    with EhrClient(small_page_service.base_url, fault_proxy.base_url) as client:
        result = ok_json(client.call("patient-view", {"patientId": patient_id}, prefetch="none"))
    ext = card_extension(result)
    assert "fever" in ext["redFlags"]
    assert f"Observation/{fever_id}" in ext["evidence"]["fever"]
    assert ext["dataComplete"] is True, ext.get("unavailable")
    pages = temperature_searches(fault_proxy)
    assert len(pages) == PAGE_CAP
    assert all(f"_count={SMALL_PAGE}" in r.query for r in pages)


def test_page_cap_drops_the_oldest_results_and_marks_the_observations_as_truncated(
        small_page_service, fault_proxy, temperature_patients, ehr):
    # Searches come newest first (_sort=-date): the page cap drops the oldest temperatures, not the fever.
    patient_id, fever_id = febrile_on_the_last_page(temperature_patients, ehr, pages=2 * PAGE_CAP)
    with EhrClient(small_page_service.base_url, fault_proxy.base_url) as client:
        result = ok_json(client.call("patient-view", {"patientId": patient_id}, prefetch="none"))
    card = the_card(result)
    ext = card["extension"]["lbp-redflags"]
    assert f"Observation/{fever_id}" in ext["evidence"]["fever"]
    assert ext["dataComplete"] is False
    truncated = unavailable_about(ext, "vital signs")
    assert truncated and "page limit" in truncated[0], ext.get("unavailable")
    assert truncated[0] in card["detail"]
    assert len(temperature_searches(fault_proxy)) == PAGE_CAP
    assert all("_sort=-date" in unquote(r.query) for r in temperature_searches(fault_proxy))


def test_paginated_prefetch_bundle_is_completed_from_the_fhir_server(service, temperature_patients,
                                                                     fault_proxy):
    patient_id, fever_id = temperature_patients("prefetch-paged", 145)   # 2 pages of the templates' 100
    with EhrClient(service.base_url, fault_proxy.base_url) as ehr:
        service_id, body = ehr.build_request("patient-view", {"patientId": patient_id}, prefetch="full")
        first_page = body["prefetch"]["vitalSigns"]
        assert any(link["relation"] == "next" for link in first_page["link"])
        assert fever_id in {e["resource"]["id"] for e in first_page["entry"]}   # newest first
        fault_proxy.clear_requests()
        result = ok_json(ehr.post(service_id, body))
    ext = card_extension(result)
    assert "fever" in ext["redFlags"]
    assert ext["dataComplete"] is True, ext.get("unavailable")
    assert fault_proxy.requests, "the service did not fetch the next pages"
    assert all(r.path.endswith("/Observation") and "_offset=" in r.query for r in fault_proxy.requests)


# ---------------------------------------------------------------------------- FHIR server faults


def fetch_mode(ehr_client: EhrClient, stored: StoredCase, hook: str | None = None) -> requests.Response:
    hook = hook or stored.case["hook"]
    return ehr_client.call(hook, stored.context(hook), prefetch="none")


def test_401_on_conditions_gives_412_naming_prefetch_conditions(ehr_via_proxy, fault_proxy, stored_cases):
    fault_proxy.status(r"/Condition\?", 401)
    response = fetch_mode(ehr_via_proxy, stored_cases["46"])
    assert response.status_code == 412, response.text
    error = response.json()["error"]
    assert error["code"] == "precondition-failed"
    fields = [d["field"] for d in error["details"]]
    assert fields == ["prefetch.conditions"]
    assert "401" in error["details"][0]["reason"]


def test_401_on_observations_only_gives_cards_marked_incomplete(ehr_via_proxy, fault_proxy, stored_cases):
    fault_proxy.status(r"/Observation\?", 401)
    result = ok_json(fetch_mode(ehr_via_proxy, stored_cases["46"]))
    ext = card_extension(result)
    assert ext["dataComplete"] is False
    labs = unavailable_about(ext, "laboratory results")
    assert labs and "401" in labs[0], ext.get("unavailable")
    assert unavailable_about(ext, "examination findings")      # the other Observation search
    assert not unavailable_about(ext, "problem list")


def test_500_on_patient_gives_412(ehr_via_proxy, fault_proxy, stored_cases):
    fault_proxy.status(r"/Patient/", 500)
    response = fetch_mode(ehr_via_proxy, stored_cases["46"])
    assert response.status_code == 412, response.text
    details = response.json()["error"]["details"]
    assert [d["field"] for d in details] == ["prefetch.patient"]


@pytest.fixture(scope="module")
def impatient_service(start_service):
    """One second per FHIR response, 2.5 seconds for all of a call's fetching; pages of 10."""
    return start_service(fhir_read_timeout=str(READ_TIMEOUT), fhir_total_timeout=str(TOTAL_TIMEOUT),
                         fhir_page_size=str(SMALL_PAGE), workers="1")


READ_TIMEOUT = 1.0
TOTAL_TIMEOUT = 2.5
SLACK = 1.5   # process and HTTP overhead on a busy test machine


def test_observations_slower_than_the_read_timeout_time_out(impatient_service, fault_proxy, stored_cases):
    fault_proxy.delay(r"/Observation\?", 8)
    with EhrClient(impatient_service.base_url, fault_proxy.base_url) as ehr:
        started = time.monotonic()
        response = fetch_mode(ehr, stored_cases["46"])
        elapsed = time.monotonic() - started
    ext = card_extension(ok_json(response))
    assert READ_TIMEOUT <= elapsed < TOTAL_TIMEOUT + SLACK, f"answered after {elapsed:.1f} s"
    assert ext["dataComplete"] is False
    labs = unavailable_about(ext, "laboratory results")
    assert labs and "timed out" in labs[0], ext.get("unavailable")
    assert not unavailable_about(ext, "problem list"), "only the slow key may be missing"


def test_observation_pages_beyond_the_total_timeout_time_out(impatient_service, fault_proxy,
                                                              temperature_patients, ehr):
    # Every page comes within the read timeout, but all of them take longer than the total timeout.
    patient_id, _fever_id = febrile_on_the_last_page(temperature_patients, ehr, pages=10)
    fault_proxy.delay(r"/Observation\?", 0.3)
    with EhrClient(impatient_service.base_url, fault_proxy.base_url) as client:
        started = time.monotonic()
        response = client.call("patient-view", {"patientId": patient_id}, prefetch="none")
        elapsed = time.monotonic() - started
    ext = card_extension(ok_json(response))
    assert TOTAL_TIMEOUT <= elapsed < TOTAL_TIMEOUT + SLACK, f"answered after {elapsed:.1f} s: {ext}"
    assert 1 < len(temperature_searches(fault_proxy)) < 10
    assert ext["dataComplete"] is False
    vitals = unavailable_about(ext, "vital signs")
    assert vitals and "timed out" in vitals[0], ext.get("unavailable")


def test_operation_outcome_instead_of_procedures_is_reported_unavailable(ehr_via_proxy, fault_proxy,
                                                                         stored_cases):
    fault_proxy.operation_outcome(r"/Procedure\?", "Procedure search is not supported")
    result = ok_json(fetch_mode(ehr_via_proxy, stored_cases["46"]))
    ext = card_extension(result)
    assert ext["dataComplete"] is False
    procedures = unavailable_about(ext, "procedures")
    assert procedures and "OperationOutcome" in procedures[0], ext.get("unavailable")
    assert "Procedure search is not supported" in procedures[0]


# name -> (request pattern, body served with 200, expected status or None for "200 or 412").
# The first group is a response that is not the resource asked for: the key counts as unavailable.
# The second is a well-formed searchset Bundle whose entries are not usable resources.
MALFORMED_RESPONSES = {
    "truncated-json-observations": (r"/Observation\?", b'{"resourceType": "Bundle", "entry": [', 200),
    "html-conditions": (r"/Condition\?", b"<html><body>Bad gateway</body></html>", 412),
    "json-array-patient": (r"/Patient/", b"[]", 412),
    "bundle-for-patient": (r"/Patient/", b'{"resourceType": "Bundle", "type": "searchset"}', 412),
    "patient-for-encounters": (r"/Encounter\?", b'{"resourceType": "Patient", "id": "x"}', 200),
    "entry-not-a-list": (r"/MedicationRequest\?", b'{"resourceType": "Bundle", "entry": {"a": 1}}', 200),
}
MALFORMED_ENTRIES = {
    "junk-entries": (r"/Procedure\?", [1, "x", None, {"resource": "y"}, {"resource": {"resourceType": 7}},
                                        {}]),
    "malformed-observations": (r"/Observation\?", [
        {"resource": {"resourceType": "Observation", "id": "bad1", "status": ["final"], "code": "8310-5",
                      "valueQuantity": "hot", "effectiveDateTime": 12}},
        {"resource": {"resourceType": "Observation", "id": "bad2", "status": "final",
                      "code": {"coding": [{"system": LOINC, "code": "8310-5"}]},
                      "valueQuantity": {"value": "39", "unit": 5}, "effectiveDateTime": "soon"}},
        {"resource": {"resourceType": "Observation", "id": "bad3", "status": "final",
                      "code": {"coding": "8310-5"}, "category": "exam", "valueQuantity": {"value": None}}},
    ]),
    "malformed-conditions": (r"/Condition\?", [
        {"resource": {"resourceType": "Condition", "id": "bad", "code": {"coding": [None, "M54.5"]},
                      "clinicalStatus": "active", "onsetDateTime": "yesterday", "subject": {"reference": 5}}},
    ]),
    "malformed-patient-fields": (r"/Patient/", {"resourceType": "Patient", "id": "x", "gender": 3,
                                                "birthDate": "the seventies", "extension": "none"}),
}


@pytest.mark.parametrize("name", list(MALFORMED_RESPONSES))
def test_malformed_fhir_response_gives_200_or_412_never_500(ehr_via_proxy, fault_proxy, stored_cases, name):
    pattern, body, expected = MALFORMED_RESPONSES[name]
    fault_proxy.malformed(pattern, body)
    response = fetch_mode(ehr_via_proxy, stored_cases["46"])
    assert response.status_code == expected, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    if expected == 200:
        ext = card_extension(response.json())
        assert ext["dataComplete"] is False
        assert any("malformed response" in item for item in ext["unavailable"]), ext["unavailable"]


@pytest.mark.parametrize("name", list(MALFORMED_ENTRIES))
def test_malformed_resources_from_the_fhir_server_never_give_500(ehr_via_proxy, fault_proxy, stored_cases,
                                                                 name):
    pattern, entries = MALFORMED_ENTRIES[name]
    body = entries if isinstance(entries, dict) else {"resourceType": "Bundle", "type": "searchset",
                                                       "entry": entries}
    fault_proxy.malformed(pattern, json.dumps(body).encode())
    response = fetch_mode(ehr_via_proxy, stored_cases["46"])
    assert response.status_code in (200, 412), response.text
    assert response.headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize("key", ["conditions", "procedures"])
def test_operation_outcome_in_a_prefetch_slot_is_fetched_again(ehr, ehr_via_proxy, fault_proxy, stored_cases,
                                                               key):
    full, service_id, body = full_prefetch_both_ways(ehr, ehr_via_proxy, stored_cases["23"])
    body["prefetch"][key] = json.loads(operation_outcome_body("store unavailable", "transient"))
    fault_proxy.clear_requests()
    refetched = ok_json(ehr_via_proxy.post(service_id, body))
    assert [requested_type(r) for r in fault_proxy.requests] == [{"conditions": "Condition",
                                                                  "procedures": "Procedure"}[key]]
    assert refetched == full


# ---------------------------------------------------------------------------- authorization


def test_bearer_token_is_sent_to_the_fhir_server_and_never_logged(service, ehr_via_proxy, fault_proxy,
                                                                  stored_cases):
    token = f"secret-{uuid.uuid4().hex}"
    stored = stored_cases["23"]
    service_id, body = ehr_via_proxy.build_request("patient-view", stored.context("patient-view"),
                                                   prefetch="none", token=token)
    since = len(service.log())
    ok_json(ehr_via_proxy.post(service_id, body))
    assert len(fault_proxy.requests) == SEARCHES
    assert {r.headers.get("Authorization") for r in fault_proxy.requests} == {f"Bearer {token}"}
    log = log_after(service, since, f"POST /cds-services/{service_id}")
    assert f"POST /cds-services/{service_id}" in log, "the service's log does not show this call"
    assert token not in log


def test_bearer_token_refused_by_the_fhir_server_is_not_logged(service, ehr_via_proxy, fault_proxy,
                                                               stored_cases):
    token = f"secret-{uuid.uuid4().hex}"
    fault_proxy.status(r"/Observation\?", 401)
    fault_proxy.status(r"/Condition\?", 401)
    service_id, body = ehr_via_proxy.build_request("patient-view", stored_cases["46"].context("patient-view"),
                                                   prefetch="none", token=token)
    since = len(service.log())
    response = ehr_via_proxy.post(service_id, body)
    assert response.status_code == 412, response.text
    assert token not in response.text
    log = log_after(service, since, "outcome=HTTP 401")
    assert "outcome=HTTP 401" in log
    assert token not in log


def test_without_fhir_authorization_no_authorization_header_is_sent(ehr_via_proxy, fault_proxy, stored_cases):
    stored = stored_cases["23"]
    service_id, body = ehr_via_proxy.build_request("patient-view", stored.context("patient-view"),
                                                   prefetch="none")
    assert "fhirAuthorization" not in body
    ok_json(ehr_via_proxy.post(service_id, body))
    assert len(fault_proxy.requests) == SEARCHES
    assert all("Authorization" not in r.headers for r in fault_proxy.requests)


def test_fhir_server_not_on_the_allow_list_gives_403_and_is_not_contacted(start_service, fault_proxy,
                                                                          stored_cases):
    restricted = start_service(fhir_allowed_servers="http://127.0.0.1:1/fhir", workers="1")
    stored = stored_cases["23"]
    with EhrClient(restricted.base_url, fault_proxy.base_url) as ehr:
        response = ehr.call("patient-view", stored.context("patient-view"), prefetch="none", token="t0k3n")
    assert response.status_code == 403, response.text
    assert response.json()["error"]["details"][0]["field"] == "fhirServer"
    assert fault_proxy.requests == []


# ---------------------------------------------------------------------------- the specification's request


def test_spec_patient_view_request_against_the_local_fhir_server_gives_no_card(service, fhir_server,
                                                                                fault_proxy):
    body = json.loads((SPEC / "hl7-cds-hooks-2.0.1" / "examples" / "request-patient-view.json")
                      .read_text(encoding="utf-8"))
    patient = body["prefetch"]["patientToGreet"]
    if requests.get(f"{fhir_server.base_url}Patient/{patient['id']}", timeout=10).status_code == 404:
        fhir_server.load_transaction(transaction([patient]))
    body["fhirServer"] = fault_proxy.base_url.rstrip("/")
    response = service.post("lbp-patient-view", body)
    assert response.status_code == 200, response.text
    assert response.json()["cards"] == []
    assert requested_types(fault_proxy) == ALL_TYPES
    assert {r.headers.get("Authorization") for r in fault_proxy.requests} == {
        "Bearer some-opaque-fhir-access-token"}
