"""Clinical notes and their Binaries fetched from the real FHIR test server (Medplum, tests/fhir_server).

The notes and Binaries are stored in the server; the service's own FHIR client reads them through a
FaultProxy (which records every request and plays the failures), and `read_notes` is what comes of
them. Turning note text into findings is tested with the text reader; these tests stop at the text.
The last tests go through the running service (gunicorn) to check that a hook call in fetch mode
reads the Binaries of the notes it will read, and no others.
"""

from __future__ import annotations

import base64
import uuid
from datetime import timedelta

import pytest
from conftest import today
from ehr_client import EhrClient
from fault_proxy import FaultProxy, operation_outcome_body

from cds_service.fhir_client import FhirClient
from cds_service.prefetch import gather
from cds_service.services import fetch_query, prefetch_templates
from cds_service.settings import load_settings
from fhir_mappings.notes import read_notes
from fhir_mappings.record import PatientRecord

pytest_plugins = ["fhir_fixtures"]

LOINC = "http://loinc.org"
CLINICAL_NOTE = {"coding": [{"system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                             "code": "clinical-note"}]}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


class StoredPatient:
    """A patient with low back pain stored in the FHIR server under ids unique to this test."""

    def __init__(self, fhir_server):
        self.fhir_server = fhir_server
        self.prefix = f"notes-{uuid.uuid4().hex[:8]}"
        self.id = f"{self.prefix}-pat"
        self.resources: list[dict] = [
            {"resourceType": "Patient", "id": self.id, "gender": "male",
             "birthDate": (today() - timedelta(days=61 * 365)).isoformat()},
            {"resourceType": "Condition", "id": f"{self.prefix}-lbp", "subject": self.subject,
             "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                            "code": "active"}]},
             "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "M54.50"}],
                      "text": "Low back pain"},
             "onsetDateTime": (today() - timedelta(days=10)).isoformat()},
        ]

    @property
    def subject(self) -> dict:
        return {"reference": f"Patient/{self.id}"}

    def binary(self, name: str, text: str, content_type: str = "text/plain") -> str:
        ident = f"{self.prefix}-{name}"
        self.resources.append({"resourceType": "Binary", "id": ident, "contentType": content_type, "data": b64(text)})
        return ident

    def note(self, name: str, days_ago: int, attachment: dict, **fields) -> str:
        ident = f"{self.prefix}-{name}"
        self.resources.append({
            "resourceType": "DocumentReference", "id": ident, "status": "current", "docStatus": "final",
            "subject": self.subject, "category": [CLINICAL_NOTE],
            "type": {"coding": [{"system": LOINC, "code": "11506-3", "display": "Progress note"}],
                     "text": "Progress note"},
            "date": f"{(today() - timedelta(days=days_ago)).isoformat()}T09:00:00Z",
            "content": [{"attachment": attachment}], **fields})
        return ident

    def report(self, name: str, days_ago: int, category: tuple[str, str], **fields) -> str:
        ident = f"{self.prefix}-{name}"
        self.resources.append({
            "resourceType": "DiagnosticReport", "id": ident, "status": "final", "subject": self.subject,
            "category": [{"coding": [{"system": category[0], "code": category[1]}]}],
            "code": {"text": "MRI lumbar spine"},
            "effectiveDateTime": (today() - timedelta(days=days_ago)).isoformat(), **fields})
        return ident

    def store(self) -> StoredPatient:
        self.fhir_server.load_transaction({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in self.resources]})
        return self


@pytest.fixture
def patient(fhir_server) -> StoredPatient:
    return StoredPatient(fhir_server)


@pytest.fixture(scope="module")
def client():
    with FhirClient(load_settings(env={})) as fhir_client:
        yield fhir_client


def fetch_and_read(client: FhirClient, base_url: str, patient: StoredPatient, **caps):
    """gather in fetch mode (no prefetch) from base_url, then read_notes of the record it makes."""
    fhir_server = base_url.rstrip("/")
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()), "fhirServer": fhir_server,
            "context": {"userId": "Practitioner/1", "patientId": patient.id}}
    gathered = gather(body, client.fetch_all, today(), **caps)
    record = PatientRecord.from_resources(gathered.resources, patient_id=patient.id, fhir_server=fhir_server,
                                          binary_errors=gathered.binary_errors, **caps)
    return read_notes(record)


def binary_requests(proxy: FaultProxy) -> list[str]:
    return [r.path.rsplit("/", 1)[1] for r in proxy.requests if "/Binary/" in r.path]


# ---------------------------------------------------------------------------- the server


def test_the_fhir_server_stores_a_binary_and_returns_it_as_fhir_json(patient, fault_proxy, client):
    ident = patient.binary("b", "Pain wakes him at night.")
    patient.store()
    [result] = client.fetch_all(fault_proxy.base_url, {"b": f"Binary/{ident}"}, None).values()
    assert result.ok, result.error
    assert result.resource["resourceType"] == "Binary"
    assert base64.b64decode(result.resource["data"]).decode() == "Pain wakes him at night."
    assert fault_proxy.requests[0].headers["Accept"] == "application/fhir+json"


def test_the_fhir_server_answers_the_notes_searches_by_category_newest_first(patient, fhir_server, client):
    inline = {"contentType": "text/plain", "data": b64("note")}
    older = patient.note("older", 30, inline)
    newer = patient.note("newer", 2, inline)
    patient.note("scan", 1, inline, category=[{"coding": [{"code": "outside-record"}]}])
    radiology = patient.report("mri", 5, (LOINC, "LP29684-5"))
    surgical = patient.report("biopsy", 40, ("http://terminology.hl7.org/CodeSystem/v2-0074", "SP"))
    patient.report("cbc", 1, ("http://terminology.hl7.org/CodeSystem/v2-0074", "LAB"))
    patient.store()
    context = {"patientId": patient.id}

    def ids(key: str) -> list[str]:
        query = fetch_query(key, prefetch_templates()[key], context, today())
        [result] = client.fetch_all(fhir_server.base_url, {key: query}, None).values()
        assert result.ok, result.error
        return [e["resource"]["id"] for e in result.resource.get("entry", [])]

    assert ids("clinicalNotes") == [newer, older]
    assert ids("diagnosticReports") == [radiology, surgical]


# ---------------------------------------------------------------------------- Binaries read and not read


def test_a_note_kept_as_a_binary_on_the_fhir_server_is_fetched_and_read(patient, fault_proxy, client):
    binary = patient.binary("b1", "<p>Wife reports he is <b>incontinent</b> since yesterday.</p>", "text/html")
    patient.note("n1", 1, {"contentType": "text/html", "url": f"Binary/{binary}"})
    patient.store()
    result = fetch_and_read(client, fault_proxy.base_url, patient)
    [note] = result.notes
    assert note.text == "Wife reports he is incontinent since yesterday."
    assert (note.kind, note.title, note.date) == ("note", "Progress note", today() - timedelta(days=1))
    assert result.unread == []
    assert binary_requests(fault_proxy) == [binary]


def test_a_binary_by_absolute_url_on_the_fhir_server_is_fetched(patient, fault_proxy, client):
    binary = patient.binary("b1", "h/o prostate ca, s/p prostatectomy 2019")
    patient.note("n1", 1, {"contentType": "text/plain", "url": f"{fault_proxy.base_url.rstrip('/')}/Binary/{binary}"})
    patient.store()
    result = fetch_and_read(client, fault_proxy.base_url, patient)
    assert [n.text for n in result.notes] == ["h/o prostate ca, s/p prostatectomy 2019"]


def test_a_binary_the_server_fails_to_return_gives_an_unread_line(patient, fault_proxy, client):
    binary = patient.binary("b1", "new urinary retention")
    patient.note("n1", 2, {"contentType": "text/plain", "url": f"Binary/{binary}"})
    patient.store()
    fault_proxy.respond(r"/Binary/", 500, operation_outcome_body("storage offline"))
    result = fetch_and_read(client, fault_proxy.base_url, patient)
    assert result.notes == []
    [line] = result.unread
    assert line.startswith(f"Progress note ({(today() - timedelta(days=2)).isoformat()}): attachment could not be "
                           "fetched (HTTP 500 OperationOutcome: storage offline)")
    assert "retention" not in line


def test_a_binary_that_is_not_fhir_json_gives_an_unread_line(patient, fault_proxy, client):
    binary = patient.binary("b1", "saddle numbness")
    patient.note("n1", 2, {"contentType": "text/plain", "url": f"Binary/{binary}"})
    patient.store()
    fault_proxy.respond(r"/Binary/", 200, b"saddle numbness", content_type="text/plain")
    result = fetch_and_read(client, fault_proxy.base_url, patient)
    assert result.notes == []
    assert result.unread == [f"Progress note ({(today() - timedelta(days=2)).isoformat()}): attachment could not be "
                             "fetched (malformed response (not JSON))"]


def test_an_attachment_on_another_server_is_never_requested(patient, fault_proxy, fhir_server, client):
    # Another loopback server the allow-list would let the service call: still not the patient's fhirServer.
    with FaultProxy(fhir_server.base_url) as elsewhere:
        patient.note("n1", 1, {"contentType": "text/plain", "url": f"{elsewhere.base_url}Binary/x"})
        patient.note("n2", 2, {"contentType": "text/plain", "url": "https://files.example.org/fhir/Binary/y"})
        patient.store()
        result = fetch_and_read(client, fault_proxy.base_url, patient)
        assert elsewhere.requests == []
    assert binary_requests(fault_proxy) == []
    assert result.unread == [
        f"Progress note ({(today() - timedelta(days=d)).isoformat()}): attachment on another server, not fetched"
        for d in (1, 2)]


def test_only_the_binaries_of_notes_within_the_cap_are_requested(patient, fault_proxy, client):
    binaries = [patient.binary(f"b{day}", f"note of day {day}") for day in range(1, 5)]
    for day, binary in zip(range(1, 5), binaries, strict=True):
        patient.note(f"n{day}", day, {"contentType": "text/plain", "url": f"Binary/{binary}"})
    patient.store()
    result = fetch_and_read(client, fault_proxy.base_url, patient, max_notes=2, max_reports=10)
    assert sorted(binary_requests(fault_proxy)) == sorted(binaries[:2])
    assert [n.text for n in result.notes] == ["note of day 1", "note of day 2"]
    assert result.unread == ["clinical notes: 2 older notes not read (limit 2)"]


def test_a_report_conclusion_and_presented_form_binary_are_read(patient, fault_proxy, client):
    binary = patient.binary("rb", "Findings: lytic lesion at L3.")
    patient.report("mri", 3, (LOINC, "LP29684-5"), conclusion="Suspicious for metastasis.",
                   presentedForm=[{"contentType": "text/plain", "url": f"Binary/{binary}"}])
    patient.store()
    [report] = fetch_and_read(client, fault_proxy.base_url, patient).notes
    assert (report.kind, report.text) == ("report", "Suspicious for metastasis.\n\nFindings: lytic lesion at L3.")


# ---------------------------------------------------------------------------- through the running service


def test_a_hook_call_in_fetch_mode_reads_the_binaries_of_the_notes_it_will_read(start_service, patient,
                                                                                fault_proxy):
    capped = start_service(max_notes="1", workers="1")
    newest = patient.binary("new", "pain at night")
    older = patient.binary("old", "weight loss")
    patient.note("n-new", 1, {"contentType": "text/plain", "url": f"Binary/{newest}"})
    patient.note("n-old", 5, {"contentType": "text/plain", "url": f"Binary/{older}"})
    patient.store()
    token = f"secret-{uuid.uuid4().hex}"
    with EhrClient(capped.base_url, fault_proxy.base_url) as ehr:
        response = ehr.call("patient-view", {"patientId": patient.id}, prefetch="none", token=token)
    assert response.status_code == 200, response.text
    assert binary_requests(fault_proxy) == [newest]
    [request] = [r for r in fault_proxy.requests if "/Binary/" in r.path]
    assert request.headers["Authorization"] == f"Bearer {token}"
    assert "pain at night" not in capped.log() and newest not in capped.log()
