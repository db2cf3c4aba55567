"""The hook requests the benchmark replays: patient-view for a generated patient, with a full prefetch
(as an EHR that prefetches sends it) or with none and a fhirServer (the service fetches everything), and
the same prefetch with the patient's progress notes."""

from __future__ import annotations

import json
import uuid

from cds_service.example_patients import hook_request

from .notes import DEFAULT_VARIANT, document_reference, note_text, note_texts
from .patients import patient_resources

HOOK = "patient-view"
HOOK_INSTANCE_MARK = "00000000-0000-4000-8000-000000000000"  # wrk replaces it with a fresh UUID per request


def prefetch_request(size: str) -> tuple[str, dict]:
    """(service id, body) with every prefetch key filled from the patient's record."""
    service_id, body = hook_request(HOOK, patient_resources(size))
    body["hookInstance"] = str(uuid.uuid4())
    return service_id, body


def fetch_request(size: str, fhir_server: str) -> tuple[str, dict]:
    """(service id, body) without prefetch: the service fetches every key from fhir_server."""
    service_id, body = hook_request(HOOK, patient_resources(size), with_prefetch=False)
    body["fhirServer"] = fhir_server.rstrip("/")
    return service_id, body


def body_for_wrk(body: dict) -> bytes:
    """The JSON body with a placeholder hookInstance that the wrk script renews on every request
    (a new hookInstance means new card uuids: every call writes its audit rows, as in production)."""
    return json.dumps({**body, "hookInstance": HOOK_INSTANCE_MARK}, separators=(",", ":")).encode()


NOTES_KEY = "clinicalNotes"        # the prefetch key of clinical notes (DocumentReference, category clinical-note)
NOTE_TEXT_MARK = "@@note-text@@"   # wrk puts a freshly varied note's base64 here on every request (post.lua)


def notes_request(size: str, count: int = 20, variant: str = DEFAULT_VARIANT) -> tuple[str, dict, list[str]]:
    """(service id, body, note templates): the prefetch request of `size` with `count` progress notes,
    inline and base64, in the clinical-notes key, VARIANT filled with `variant`. The templates hold
    VARIANT (see bench/notes.py)."""
    service_id, body = prefetch_request(size)
    patient_id = body["context"]["patientId"]
    notes = note_texts(count)
    entries = [document_reference(patient_id, index, visit, note_text(text, variant))
               for index, (visit, text) in enumerate(notes)]
    body["prefetch"][NOTES_KEY] = {"resourceType": "Bundle", "type": "searchset", "total": len(entries),
                                   "entry": [{"fullUrl": f"DocumentReference/{r['id']}", "resource": r,
                                              "search": {"mode": "match"}} for r in entries]}
    return service_id, body, [text for _visit, text in notes]


def body_with_note_holes(body: dict) -> bytes:
    """body_for_wrk, each note's base64 replaced by NOTE_TEXT_MARK (in the order of the Bundle)."""
    holed = json.loads(json.dumps(body))
    for entry in holed["prefetch"][NOTES_KEY]["entry"]:
        entry["resource"]["content"][0]["attachment"]["data"] = NOTE_TEXT_MARK
    return body_for_wrk(holed)


def notes_for_wrk(templates: list[str]) -> bytes:
    """The note templates as post.lua reads them: NUL-separated."""
    assert not any("\0" in t for t in templates)
    return "\0".join(templates).encode()
