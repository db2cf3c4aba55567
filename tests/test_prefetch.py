"""Prefetch semantics of CDS Hooks 2.0: absent = not provided, null = no data, OperationOutcome = error."""

from datetime import date

import pytest

from cds_service.errors import ServiceError
from cds_service.prefetch import gather, prefetch_for
from cds_service.services import prefetch_templates

PATIENT = {"resourceType": "Patient", "id": "p1"}
EMPTY = {"resourceType": "Bundle", "type": "searchset", "entry": []}
ALL_NULL = {key: None for key in prefetch_templates() if key != "patient"}
OPTIONAL = set(ALL_NULL) - {"conditions"}
TODAY = date(2026, 11, 30)
SERVER = "http://127.0.0.1:1/fhir"


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
    def __init__(self, resource=None, ok=True, error=None, truncated=False, status=None):
        self.resource, self.ok, self.error, self.truncated, self.status = resource, ok, error, truncated, status


def test_null_means_no_data_and_is_not_reported_missing():
    gathered = gather(body({"patient": PATIENT, **ALL_NULL}))
    assert gathered.unavailable == [] and gathered.resources == [PATIENT]


def test_absent_optional_keys_without_fhir_server_are_reported_missing():
    gathered = gather(body({"patient": PATIENT, "conditions": EMPTY}))
    assert len(gathered.unavailable) == len(OPTIONAL)
    assert any(item.startswith("laboratory results") for item in gathered.unavailable)


def test_absent_keys_are_fetched_from_the_fhir_server_with_the_context_filled_in():
    fetcher = Fetcher({"labs": Result(EMPTY)})
    gather(body({"patient": PATIENT, "conditions": EMPTY}, fhirServer=SERVER), fetcher, TODAY)
    assert fetcher.asked["survey"] == "Observation?patient=p1&category=survey&date=ge2024-11-30&_sort=-date"
    assert {key.split(" ")[0] for key in fetcher.asked} == OPTIONAL


def test_large_searches_are_cut_into_date_slices_fetched_in_parallel_newest_first():
    fetcher = Fetcher({})
    gather(body({"patient": PATIENT, "conditions": EMPTY}, fhirServer=SERVER), fetcher, TODAY)
    assert [query for key, query in fetcher.asked.items() if key.startswith("labs")] == [
        "Observation?patient=p1&category=laboratory&date=ge2026-06-01&_sort=-date",
        "Observation?patient=p1&category=laboratory&date=ge2025-11-30&date=lt2026-06-01&_sort=-date",
        "Observation?patient=p1&category=laboratory&date=ge2025-05-31&date=lt2025-11-30&_sort=-date",
        "Observation?patient=p1&category=laboratory&date=ge2024-11-30&date=lt2025-05-31&_sort=-date"]
    assert [key for key in fetcher.asked if key.startswith("allObservations")] == [
        f"allObservations {i}/4" for i in range(1, 5)]


def test_slices_are_merged_and_one_failed_slice_makes_the_key_incomplete():
    def bundle(ident):
        return dict(EMPTY, entry=[{"resource": {"resourceType": "Observation", "id": ident}}])
    fetcher = Fetcher({"labs 1/4": Result(bundle("new")), "labs 2/4": Result(bundle("older")),
                       "labs 3/4": Result(ok=False, error="timed out"), "labs 4/4": Result(EMPTY)})
    gathered = gather(body({"patient": PATIENT, **{k: v for k, v in ALL_NULL.items() if k != "labs"}},
                           fhirServer=SERVER), fetcher, TODAY)
    assert [r["id"] for r in gathered.resources if r["resourceType"] == "Observation"] == ["new", "older"]
    assert gathered.unavailable == ["laboratory results: timed out"]


def test_fetch_mode_windows_only_recent_only_observations():
    fetcher = Fetcher({"conditions": Result(EMPTY)})
    gather(body({"patient": PATIENT}, fhirServer=SERVER), fetcher, TODAY)
    windowed = {key.split(" ")[0] for key, query in fetcher.asked.items() if "date=ge" in query}
    assert windowed == {"labs", "vitalSigns", "survey", "allObservations"}
    assert fetcher.asked["conditions"] == "Condition?patient=p1"
    assert fetcher.asked["socialHistory"] == "Observation?patient=p1&category=social-history&_sort=-date"
    assert fetcher.asked["allObservations 4/4"] == (
        "Observation?patient=p1&date=ge2024-11-30&date=lt2025-05-31&_sort=-date")
    assert list(fetcher.asked)[-1] == "allObservations 4/4"


def test_every_search_template_is_bounded_and_observations_come_newest_first():
    for key, template in prefetch_templates().items():
        if "?" in template:
            assert "&_count=" in template, key
        if template.startswith("Observation?"):
            assert "&_sort=-date" in template, key
            assert key == "allObservations" or "&category=" in template, key
    assert "intent=" in prefetch_templates()["medications"]   # US Core: patient+intent
    for key in ("medications", "medicationStatements", "medicationAdministrations"):
        assert "&_include=" in prefetch_templates()[key] and ":medication" in prefetch_templates()[key]


@pytest.mark.parametrize("status", [400, 403])
def test_a_refused_search_without_category_is_not_checked_not_a_failure(status):
    fetcher = Fetcher({f"allObservations {i}/4": Result(ok=False, error=f"HTTP {status} (refused)", status=status)
                       for i in range(1, 5)})
    gathered = gather(body({"patient": PATIENT, **{k: v for k, v in ALL_NULL.items() if k != "allObservations"},
                            "conditions": EMPTY}, fhirServer=SERVER), fetcher, TODAY)
    assert gathered.unavailable == [
        "observations without a category (e.g. symptoms typed into a flowsheet): not checked: the FHIR server "
        f"does not allow a search without category (HTTP {status} (refused))"]


def medication_request(ident, reference):
    return {"resourceType": "MedicationRequest", "id": ident, "status": "active", "intent": "order",
            "subject": {"reference": "Patient/p1"}, "medicationReference": {"reference": reference}}


class SecondRoundFetcher(Fetcher):
    """Serves reads of Medication/<id> and Binary/<id> from dicts by id; records every round of queries."""

    def __init__(self, stored):
        super().__init__({})
        self.stored, self.rounds = stored, []

    def __call__(self, base, queries, token):
        self.rounds.append(dict(queries))
        return {key: Result(self.stored[query]) if query in self.stored else Result(ok=False, error="HTTP 404")
                for key, query in queries.items()}


def test_medications_not_included_are_read_in_a_second_round():
    included = {"resourceType": "Medication", "id": "m-in", "code": {"text": "tamoxifen"}}
    bundle = dict(EMPTY, entry=[{"resource": medication_request("r1", "Medication/m-in")},
                                {"resource": included, "search": {"mode": "include"}},
                                {"resource": medication_request("r2", "Medication/m-out")},
                                {"resource": medication_request("r3", f"{SERVER}/Medication/m-abs")},
                                {"resource": medication_request("r4", "#contained")},
                                {"resource": medication_request("r5", "Medication/gone")}])
    server_side = {"m-out": {"resourceType": "Medication", "id": "m-out", "code": {"text": "letrozole"}},
                   "m-abs": {"resourceType": "Medication", "id": "m-abs", "code": {"text": "anastrozole"}}}
    fetcher = SecondRoundFetcher({f"Medication/{ident}": resource for ident, resource in server_side.items()})
    gathered = gather(body({"patient": PATIENT, **ALL_NULL, "medications": bundle}, fhirServer=SERVER),
                      fetcher, TODAY)
    assert fetcher.rounds == [{"medication 0": "Medication/m-out", "medication 1": "Medication/m-abs",
                               "medication 2": "Medication/gone"}]
    assert [r["id"] for r in gathered.resources if r["resourceType"] == "Medication"] == ["m-in", "m-out", "m-abs"]


def test_without_a_fhir_server_there_is_no_second_round():
    bundle = dict(EMPTY, entry=[{"resource": medication_request("r1", "Medication/m-out")}])
    gathered = gather(body({"patient": PATIENT, **ALL_NULL, "medications": bundle}), None, TODAY)
    assert not any(r["resourceType"] == "Medication" for r in gathered.resources)


def test_prefetch_builder_fills_each_category_and_includes_referenced_medications():
    survey = {"resourceType": "Observation", "id": "o1", "category": [{"coding": [{"code": "survey"}]}]}
    bare = {"resourceType": "Observation", "id": "o2"}
    medication = {"resourceType": "Medication", "id": "m1"}
    prefetch = prefetch_for([PATIENT, survey, bare, medication, medication_request("r1", "Medication/m1")])
    assert [e["resource"]["id"] for e in prefetch["survey"]["entry"]] == ["o1"]
    assert [e["resource"]["id"] for e in prefetch["allObservations"]["entry"]] == ["o1", "o2"]
    assert prefetch["labs"]["entry"] == []
    assert [(e["resource"]["id"], e["search"]["mode"]) for e in prefetch["medications"]["entry"]] == [
        ("r1", "match"), ("m1", "include")]


def test_operation_outcome_in_a_slot_is_fetched_again_when_a_server_is_given():
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    fetcher = Fetcher({"conditions": Result(EMPTY)})
    gather(body({"patient": PATIENT, **ALL_NULL, "conditions": outcome}, fhirServer="http://127.0.0.1:1/fhir"),
           fetcher)
    assert fetcher.asked == {"conditions": "Condition?patient=p1"}   # the template's _count left to the client


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


# ---------------------------------------------------------------------------- clinical notes and reports (issue 12)


def note(ident, when, url=None, category="clinical-note"):
    attachment = {"contentType": "text/plain", "url": url} if url else {"contentType": "text/plain", "data": "dGV4dA=="}
    return {"resourceType": "DocumentReference", "id": ident, "status": "current", "date": when,
            "subject": {"reference": "Patient/p1"}, "category": [{"coding": [{"code": category}]}],
            "content": [{"attachment": attachment}]}


def radiology_report(ident, when, category=("http://loinc.org", "LP29684-5")):
    return {"resourceType": "DiagnosticReport", "id": ident, "status": "final", "effectiveDateTime": when,
            "subject": {"reference": "Patient/p1"}, "conclusion": "No acute findings.",
            "category": [{"coding": [{"system": category[0], "code": category[1]}]}]}


def notes_prefetch(*notes):
    return {"patient": PATIENT, **ALL_NULL, "clinicalNotes": dict(EMPTY, entry=[{"resource": n} for n in notes])}


def test_notes_and_reports_are_searched_newest_first_with_us_core_parameters():
    assert prefetch_templates()["clinicalNotes"] == (
        "DocumentReference?patient={{context.patientId}}&category=clinical-note&_sort=-date&_count=50")
    assert prefetch_templates()["diagnosticReports"].startswith(
        "DiagnosticReport?patient={{context.patientId}}&category=http://loinc.org|LP29684-5,"
        "http://loinc.org|LP7839-6,http://terminology.hl7.org/CodeSystem/v2-0074|RAD,")
    assert prefetch_templates()["diagnosticReports"].endswith("&_sort=-date&_count=50")


def test_absent_notes_keys_are_fetched_without_a_date_window():
    fetcher = Fetcher({})
    gather(body({"patient": PATIENT, "conditions": EMPTY}, fhirServer=SERVER), fetcher, TODAY)
    assert fetcher.asked["clinicalNotes"] == "DocumentReference?patient=p1&category=clinical-note&_sort=-date"
    assert fetcher.asked["diagnosticReports"].startswith("DiagnosticReport?patient=p1&category=http://loinc.org|")
    assert "date=" not in fetcher.asked["diagnosticReports"].replace("_sort=-date", "")


def test_a_failed_notes_search_is_reported_like_any_optional_key():
    fetcher = Fetcher({"clinicalNotes": Result(ok=False, error="HTTP 403 (forbidden)")})
    gathered = gather(body({k: v for k, v in notes_prefetch().items() if k != "clinicalNotes"}, fhirServer=SERVER),
                      fetcher, TODAY)
    assert gathered.unavailable == ["clinical notes: HTTP 403 (forbidden)"]


def test_binaries_of_the_notes_to_read_are_fetched_with_medications_in_one_round():
    notes = [note(f"n{day}", f"2026-11-{day:02d}", f"Binary/b{day}") for day in range(1, 5)]
    medications = dict(EMPTY, entry=[{"resource": medication_request("r1", "Medication/m1")}])
    stored = {"Medication/m1": {"resourceType": "Medication", "id": "m1"},
              **{f"Binary/b{day}": {"resourceType": "Binary", "id": f"b{day}", "contentType": "text/plain",
                                    "data": "dGV4dA=="} for day in range(1, 5)}}
    fetcher = SecondRoundFetcher(stored)
    gathered = gather(body({**notes_prefetch(*notes), "medications": medications}, fhirServer=SERVER),
                      fetcher, TODAY, max_notes=3)
    assert fetcher.rounds == [{"medication 0": "Medication/m1", "binary 0": "Binary/b4", "binary 1": "Binary/b3",
                               "binary 2": "Binary/b2"}]
    assert [r["id"] for r in gathered.resources if r["resourceType"] == "Binary"] == ["b4", "b3", "b2"]
    assert gathered.binary_errors == {}


def test_a_binary_that_cannot_be_fetched_is_recorded_with_the_reason():
    fetcher = SecondRoundFetcher({})
    gathered = gather(body(notes_prefetch(note("n1", "2026-11-28", "Binary/gone")), fhirServer=SERVER),
                      fetcher, TODAY)
    assert gathered.binary_errors == {"gone": "HTTP 404"}
    assert gathered.unavailable == []   # the notes reader names the note, not the prefetch key


def test_at_most_30_binaries_are_fetched_in_one_call():
    notes = [note(f"n{i}", f"2026-{1 + i // 28:02d}-{1 + i % 28:02d}", f"Binary/b{i}") for i in range(35)]
    fetcher = SecondRoundFetcher({})
    gathered = gather(body(notes_prefetch(*notes), fhirServer=SERVER), fetcher, TODAY, max_notes=35)
    assert len(fetcher.rounds[0]) == 30
    assert sorted(gathered.binary_errors.values()).count("more than 30 attachments to fetch in one call") == 5


def test_no_binary_is_fetched_without_a_fhir_server():
    gathered = gather(body(notes_prefetch(note("n1", "2026-11-28", "Binary/b1"))), None, TODAY)
    assert not any(r["resourceType"] == "Binary" for r in gathered.resources)


def test_prefetch_builder_files_clinical_notes_and_radiology_reports_newest_first():
    lab_report = radiology_report("lab", "2026-11-10", ("http://terminology.hl7.org/CodeSystem/v2-0074", "LAB"))
    prefetch = prefetch_for([PATIENT, note("old", "2026-01-01"), note("new", "2026-11-01"),
                             note("other", "2026-11-02", category="imaging"), radiology_report("mri", "2026-11-20"),
                             lab_report, radiology_report("path", "2026-11-25", ("http://loinc.org", "LP7839-6"))])
    assert [e["resource"]["id"] for e in prefetch["clinicalNotes"]["entry"]] == ["new", "old"]
    assert [e["resource"]["id"] for e in prefetch["diagnosticReports"]["entry"]] == ["path", "mri"]


def test_the_binary_of_a_note_about_another_patient_is_not_fetched():
    foreign = dict(note("n2", "2026-11-29", "Binary/theirs"), subject={"reference": "Patient/p2"})
    fetcher = SecondRoundFetcher({})
    gather(body(notes_prefetch(foreign, note("n1", "2026-11-28", "Binary/ours")), fhirServer=SERVER), fetcher,
           TODAY, max_notes=1)
    assert fetcher.rounds == [{"binary 0": "Binary/ours"}]


def paged_notes(count):
    notes = [note(f"n{i}", f"2026-11-{28 - i:02d}") for i in range(count)]
    return dict(notes_prefetch(*notes)["clinicalNotes"],
                link=[{"relation": "next", "url": f"{SERVER}/DocumentReference?patient=p1&_offset=50"}])


def test_later_pages_of_prefetched_notes_are_not_fetched_when_the_first_holds_as_many_as_are_read():
    fetcher = Fetcher({})
    gathered = gather(body({**notes_prefetch(), "clinicalNotes": paged_notes(5)}, fhirServer=SERVER), fetcher,
                      TODAY, max_notes=5)
    assert fetcher.asked == {}
    assert gathered.unavailable == []


def test_later_pages_of_prefetched_notes_are_fetched_when_the_first_holds_fewer_than_are_read():
    fetcher = Fetcher({"clinicalNotes": Result(EMPTY)})
    gather(body({**notes_prefetch(), "clinicalNotes": paged_notes(5)}, fhirServer=SERVER), fetcher, TODAY,
           max_notes=6)
    assert fetcher.asked == {"clinicalNotes": f"{SERVER}/DocumentReference?patient=p1&_offset=50"}
