"""The hook requests the benchmark replays: patient-view for a generated patient, with a full prefetch
(as an EHR that prefetches sends it) or with none and a fhirServer (the service fetches everything)."""

from __future__ import annotations

import json
import uuid

from cds_service.example_patients import hook_request

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
