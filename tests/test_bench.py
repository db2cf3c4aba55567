"""The benchmark's inputs are real hook requests, and its notes scenario sends what it says it sends (the
benchmark itself runs by hand: ./bench/run; no timing is asserted here)."""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from datetime import date, timedelta

import pytest
from conftest import ROOT
from flask import Flask, request

from bench import hook_requests as requests_with_notes
from bench.baseline import app as baseline_app
from bench.benchmark import measure_notes, notes_summary, report, start_service, wrk
from bench.hook_requests import HOOK_INSTANCE_MARK, NOTES_KEY, body_for_wrk, fetch_request, prefetch_request
from bench.notes import VARIANT, note_text, note_texts
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


# ================================================================ the notes scenario (issue 12)


def sent_notes(body: dict) -> list[str]:
    """The note texts of a request's clinical-notes key, decoded."""
    return [base64.b64decode(e["resource"]["content"][0]["attachment"]["data"], validate=True).decode()
            for e in body["prefetch"][NOTES_KEY]["entry"]]


def test_progress_notes_are_about_4_kb_with_the_sections_of_a_progress_note():
    notes = note_texts(20, today=date(2026, 11, 30))
    assert len(notes) == 20 and len({text for _day, text in notes}) == 20
    for visit, text in notes:
        assert 3_500 <= len(note_text(text).encode()) <= 4_600
        assert text.count(VARIANT) >= 30  # in every sentence and list line
        for section in ("HISTORY OF PRESENT ILLNESS:", "REVIEW OF SYSTEMS:", "PAST MEDICAL HISTORY:",
                        "FAMILY HISTORY:", "ASSESSMENT:", "PLAN:"):
            assert f"\n{section}\n" in text
        assert date(2026, 11, 30) - visit < timedelta(days=30)


def test_progress_notes_state_some_red_flags_and_negate_others():
    text = " ".join(note_text(t) for _day, t in note_texts(20))
    assert "Pain wakes him at night" in text and "unintentional weight loss" in text
    assert "denies saddle anaesthesia" in text and "Saddle anaesthesia: No." in text
    assert "Mother had breast cancer" in text and "if he develops numbness in the groin" in text


def test_the_notes_request_carries_20_current_final_progress_notes_inline_in_the_clinical_notes_key():
    _service_id, body, templates = requests_with_notes.notes_request("typical", 20)
    assert problems("request", body) == []
    bundle = body["prefetch"][NOTES_KEY]
    assert bundle["total"] == 20 and len(bundle["entry"]) == 20
    for entry in bundle["entry"]:
        note = entry["resource"]
        assert note["resourceType"] == "DocumentReference" and note["status"] == "current"
        assert note["docStatus"] == "final" and note["type"]["text"] == "Progress note"
        assert note["subject"]["reference"] == f"Patient/{body['context']['patientId']}"
        assert note["content"][0]["attachment"]["contentType"] == "text/plain; charset=utf-8"
    assert sent_notes(body) == [note_text(t) for t in templates]
    without_notes = prefetch_request("typical")[1]
    assert without_notes["context"] == body["context"]
    others = {k: v for k, v in body["prefetch"].items() if k != NOTES_KEY}
    assert others == {k: v for k, v in without_notes["prefetch"].items() if k != NOTES_KEY}
    assert not without_notes["prefetch"].get(NOTES_KEY, {}).get("entry")


def test_the_service_answers_the_request_with_notes(client):
    service_id, body, _templates = requests_with_notes.notes_request("small", 20)
    response = client.post(f"/cds-services/{service_id}", json=body)
    assert response.status_code == 200, response.get_json()
    tiers = [c["extension"]["lbp-redflags"]["tier"] for c in response.get_json()["cards"]]
    assert tiers == ["imaging"], "low back pain with a history of prostate cancer (coded, and in every note)"


@pytest.fixture
def recorder(serve_app):
    """A loopback server that keeps every body POSTed to it (the service's path) and answers no cards."""
    app = Flask(__name__)
    app.bodies = []

    @app.post("/cds-services/<service_id>")
    def record(service_id: str):
        app.bodies.append(request.get_data())
        return {"cards": []}

    server = serve_app(app)
    server.bodies = app.bodies
    return server


def test_wrk_sends_note_texts_never_sent_before_on_every_request_of_a_first_read(recorder, tmp_path):
    service_id, body, templates = requests_with_notes.notes_request("small", 20)
    holed, notes = requests_with_notes.body_with_note_holes(body), requests_with_notes.notes_for_wrk(templates)
    for _run in range(2):  # the warm-up and the measured run must not repeat each other's texts either
        wrk(recorder.base_url, holed, f"/cds-services/{service_id}", duration=1, connections=2, workdir=tmp_path,
            notes=notes)
    assert len(recorder.bodies) >= 4
    seen = set()
    for sent in recorder.bodies:
        request = json.loads(sent)
        texts = sent_notes(request)
        value = re.search(r"Visit ref\. (\d{8})\n", texts[0])[1]  # one value for all notes of a request
        assert texts == [note_text(template, value) for template in templates]
        assert value not in seen, "a request repeated another's text: cached readings could answer"
        seen.add(value)
        assert {k: v for k, v in request["prefetch"].items() if k != NOTES_KEY} == {
            k: v for k, v in body["prefetch"].items() if k != NOTES_KEY}
    assert len({json.loads(b)["hookInstance"] for b in recorder.bodies}) == len(recorder.bodies)


def test_every_piece_of_a_note_that_the_reader_parses_changes_with_the_value():
    """The reader caches its readings piece by piece: after one request's notes, the next request's (another
    value) must find nothing in the cache but what repeats among its own notes."""
    from fhir_mappings import text as reader

    templates = [text for _day, text in note_texts(20, seed=97)]
    # The reader's bounded caches of readings, whatever they are named (its unbounded ones hold rules).
    caches = [f for f in vars(reader).values() if hasattr(f, "cache_info") and f.cache_info().maxsize]
    assert caches

    def cache_hits_reading(value: str) -> int:
        before = sum(c.cache_info().hits for c in caches)
        for template in templates:
            assert reader.mentions(note_text(template, value))
        return sum(c.cache_info().hits for c in caches) - before

    for cached in caches:
        cached.cache_clear()
    alone = cache_hits_reading("22222222")  # the pieces repeated among the notes of one request
    for cached in caches:
        cached.cache_clear()
    cache_hits_reading("11111111")
    assert cache_hits_reading("33333333") == alone, "a piece of a rewritten note was read from the cache"


def test_wrk_sends_the_same_note_texts_on_every_request_when_cached(recorder, tmp_path):
    service_id, body, _templates = requests_with_notes.notes_request("small", 20)
    wrk(recorder.base_url, body_for_wrk(body), f"/cds-services/{service_id}", duration=1, connections=1,
        workdir=tmp_path)
    assert len(recorder.bodies) >= 2
    assert all(sent_notes(json.loads(b)) == sent_notes(body) for b in recorder.bodies)


def test_the_notes_scenario_runs_against_the_service_and_reports_its_rows(tmp_path):
    service = start_service(tmp_path)
    try:
        results = measure_notes(service, "small", 20, duration=1, connections=1, workdir=tmp_path, min_calls=2)
    finally:
        service.stop()
    assert [f.notes for f in results] == ["none", "first read", "cached"]
    assert all(f.requests > 0 and f.errors == 0 for f in results)
    assert results[1].body_kib > results[0].body_kib + 100  # 20 notes of about 4 KB, base64
    info = {"date": "today", "cpu": "cpu", "cores": 2, "memory_gib": 1, "python": "3.11", "wrk": "wrk",
            "load_average_at_start": (0.0,), "load_average_at_end": (0.0,), "workers": 2, "threads": 4,
            "sizes": [], "notes": 20}
    table = report(results, info, 50.0)
    rows = [line for line in table.splitlines() if line.startswith(("| none |", "| 20, first read |",
                                                                    "| 20, cached |"))]
    assert len(rows) == 3
    summary = notes_summary(results)
    assert len(summary) == 2 and summary[0].startswith("notes, first read, 1 connection(s): added p50 ")
    assert "target: under 50 ms" in summary[0]
