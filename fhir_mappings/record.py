"""The FHIR resources of one patient, as plain dicts, plus what could not be had."""

from __future__ import annotations

from dataclasses import dataclass, field

# Binary has no subject: it is kept, and read only by id, as the attachment of a note of this patient.
RESOURCE_TYPES = ("Condition", "Observation", "Encounter", "Procedure", "MedicationRequest",
                  "MedicationStatement", "MedicationAdministration", "Medication", "ServiceRequest",
                  "DocumentReference", "DiagnosticReport", "Binary")

# Observation categories (http://terminology.hl7.org/CodeSystem/observation-category) the clinical core
# reads, each searched on its own: US Core servers answer patient+category, and several refuse a
# search by patient alone.
OBSERVATION_CATEGORIES = ("laboratory", "vital-signs", "social-history", "survey", "exam")
# Observations describe the patient only while recent, except exam findings and social history (smoking,
# injection drug use), which have their own unwindowed searches: lab results, vital signs, questionnaire
# answers and Observations without a category (symptoms typed into a flowsheet) older than this are not
# read, whether they came in prefetch or were fetched (fetch mode asks for them with date=ge, so both
# modes read the same record). Nothing read from an Observation shows a cancer history; conditions,
# procedures and medications have no window.
RECENT_OBSERVATION_DAYS = 730
UNWINDOWED_CATEGORIES = ("social-history", "exam")


@dataclass
class PatientRecord:
    patient: dict | None
    resources: dict[str, list[dict]] = field(default_factory=dict)
    draft_orders: dict | None = None  # the draftOrders Bundle of an order hook
    selections: tuple[str, ...] = ()
    encounter_id: str | None = None
    patient_id: str | None = None  # context.patientId: the patient the EHR asked about
    unavailable: list[str] = field(default_factory=list)  # human-readable: what data is missing and why
    max_notes: int = 20    # clinical notes read, newest first
    max_reports: int = 10  # imaging and pathology reports read, newest first
    fhir_server: str | None = None  # where attachments by URL come from; no other server's are read
    binary_errors: dict[str, str] = field(default_factory=dict)  # Binary id -> why it could not be fetched

    def of_type(self, resource_type: str) -> list[dict]:
        return self.resources.get(resource_type, [])

    @classmethod
    def from_resources(cls, resources: list[dict], **kwargs) -> PatientRecord:
        """Group resources by type, dropping duplicates by (type, id) so prefetch and fetch can overlap.

        With ``patient_id`` (the context's), a resource whose subject is another patient is left out
        and counted in ``unavailable``: wrong-patient data must never reach a card.
        """
        patient_id = kwargs.get("patient_id")
        patient = None
        grouped: dict[str, list[dict]] = {}
        seen: set[tuple[str, str]] = set()
        foreign = 0
        for resource in resources:
            if not isinstance(resource, dict):
                continue
            rtype = resource.get("resourceType")
            if rtype == "Patient":
                if patient_id is None or resource.get("id") == patient_id:
                    patient = patient or resource
                else:
                    foreign += 1
                continue
            if rtype not in RESOURCE_TYPES:
                continue
            if patient_id is not None and subject_id(resource) not in (None, patient_id):
                foreign += 1
                continue
            rid = resource.get("id")
            if isinstance(rid, str):
                if (rtype, rid) in seen:
                    continue
                seen.add((rtype, rid))
            grouped.setdefault(rtype, []).append(resource)
        record = cls(patient=patient, resources=grouped, **kwargs)
        if foreign:
            record.unavailable = [*record.unavailable,
                                  f"{foreign} resource(s) about another patient were ignored"]
        return record


def subject_id(resource: dict) -> str | None:
    """The Patient id a resource is about, from subject (or patient), or None when it does not say."""
    ref = resource.get("subject") or resource.get("patient")
    ref = ref.get("reference") if isinstance(ref, dict) else None
    if not isinstance(ref, str) or "Patient/" not in ref:
        return None
    return ref.rsplit("Patient/", 1)[1].split("/", 1)[0] or None
