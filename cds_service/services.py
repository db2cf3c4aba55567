"""The four CDS services, declared once; discovery and prefetch resolution are derived from here."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache

from fhir_mappings.notes import REPORT_CATEGORIES
from fhir_mappings.record import OBSERVATION_CATEGORIES, RECENT_OBSERVATION_DAYS, UNWINDOWED_CATEGORIES

# Prefetch keys the clinical core reads. Patient and Conditions are required: without them
# applicability (does this patient have low back pain?) cannot be decided.
REQUIRED_KEYS = ("patient", "conditions")

PAGE_SIZE = 100  # _count of every search template; fetch mode uses the client's configured page size
NOTES_PAGE_SIZE = 50  # _count of the notes and reports templates: newest first, more than the caps read
# Every intent of MedicationRequest: US Core's mandatory search is patient+intent.
MEDICATION_REQUEST_INTENTS = "proposal,plan,order,original-order,reflex-order,filler-order,instance-order,option"
_PATIENT = "patient={{context.patientId}}"
_OBSERVATION_KEYS = {"labs": "laboratory", "vitalSigns": "vital-signs", "socialHistory": "social-history",
                     "survey": "survey", "examObservations": "exam"}
assert set(_OBSERVATION_KEYS.values()) == set(OBSERVATION_CATEGORIES)
# Clinical notes (US Core DocumentReference category clinical-note) and imaging and pathology reports
# (the DiagnosticReport categories fhir_mappings.notes reads), newest first. No date window in either
# mode: a cancer history may be in an old note.
NOTES_KEY = "clinicalNotes"
REPORTS_KEY = "diagnosticReports"
REPORT_CATEGORY_SEARCH = ",".join(f"{system}|{code}" for system, code in REPORT_CATEGORIES)
# Observations with no category (a symptom typed into a flowsheet) can only be found by a search on
# the patient alone, which US Core does not require and several servers refuse (400/403): it goes
# last, and a refusal is reported as "not checked", never as a failure of the call.
UNCATEGORISED_KEY = "allObservations"
# Keys holding data that describes the patient only while recent (labs, vital signs, survey answers,
# and what the search without category adds: symptoms): fetch mode asks for them with date=ge, and the
# findings reader ignores older ones whichever way they came.
WINDOWED_KEYS = (*(k for k, category in _OBSERVATION_KEYS.items() if category not in UNWINDOWED_CATEGORIES),
                 UNCATEGORISED_KEY)


def observation_keys() -> dict[str, str]:
    """Prefetch key -> the Observation category it searches."""
    return dict(_OBSERVATION_KEYS)


@cache
def prefetch_templates() -> dict[str, str]:
    """CDS Hooks 2.0 prefetch templates: only context tokens, no FHIRPath (3.0) expressions.

    Each is a US Core mandatory search combination where one exists (patient+category for
    Observations, patient+intent for MedicationRequest, patient for Condition, Encounter and
    Procedure), bounded by _count; Observations newest first, so a page cap drops the oldest.
    """
    templates = {
        "patient": "Patient/{{context.patientId}}",
        "conditions": f"Condition?{_PATIENT}&_count={PAGE_SIZE}",
        "activeServiceRequests": f"ServiceRequest?{_PATIENT}&status=active&_count={PAGE_SIZE}",
    }
    for key, category in _OBSERVATION_KEYS.items():
        templates[key] = f"Observation?{_PATIENT}&category={category}&_sort=-date&_count={PAGE_SIZE}"
    templates.update({
        "encounters": f"Encounter?{_PATIENT}&_count={PAGE_SIZE}",
        "procedures": f"Procedure?{_PATIENT}&_count={PAGE_SIZE}",
        "medications": (f"MedicationRequest?{_PATIENT}&intent={MEDICATION_REQUEST_INTENTS}"
                        f"&_include=MedicationRequest:medication&_count={PAGE_SIZE}"),
        "medicationStatements": (f"MedicationStatement?{_PATIENT}&_include=MedicationStatement:medication"
                                 f"&_count={PAGE_SIZE}"),
        "medicationAdministrations": (f"MedicationAdministration?{_PATIENT}"
                                      f"&_include=MedicationAdministration:medication&_count={PAGE_SIZE}"),
        NOTES_KEY: f"DocumentReference?{_PATIENT}&category=clinical-note&_sort=-date&_count={NOTES_PAGE_SIZE}",
        REPORTS_KEY: (f"DiagnosticReport?{_PATIENT}&category={REPORT_CATEGORY_SEARCH}"
                      f"&_sort=-date&_count={NOTES_PAGE_SIZE}"),
        UNCATEGORISED_KEY: f"Observation?{_PATIENT}&_sort=-date&_count={PAGE_SIZE}",
    })
    return templates


# Keys of earlier discovery documents (an EHR may keep the prefetch it was configured with): their
# resources are read when sent, but they are never fetched and never make the data incomplete.
LEGACY_TEMPLATES = {"observations": "Observation?patient={{context.patientId}}&code=..."}


def fetch_query(key: str, template: str, context: dict, today: date) -> str | None:
    """The query fetch mode sends for a key: its template filled in, without the template's _count
    (the FHIR client pages with its configured size) and, for recent-only data, with date=ge."""
    query = resolve_template(template, context)
    if query is None:
        return None
    path, _, params = query.partition("?")
    kept = [p for p in params.split("&") if p and not p.startswith("_count=")]
    if key in WINDOWED_KEYS:
        since = today - timedelta(days=RECENT_OBSERVATION_DAYS)
        kept.insert(2 if "category=" in query else 1, f"date=ge{since.isoformat()}")
    return f"{path}?{'&'.join(kept)}" if kept else path


# Keys that fill many pages on a large record (results pile up by the hundred a year). Fetch mode cuts
# their window into slices searched in parallel, newest first: pages of one search come one after the
# other, so a single search of 1,500 Observations would be the slowest part of every call.
SLICED_KEYS = ("labs", "vitalSigns", UNCATEGORISED_KEY)
SLICES = 4


def fetch_queries(key: str, template: str, context: dict, today: date) -> list[str]:
    """fetch_query, cut into SLICES date ranges (newest first) for SLICED_KEYS; [] when it cannot be filled."""
    query = fetch_query(key, template, context, today)
    if query is None:
        return []
    if key not in SLICED_KEYS:
        return [query]
    since = today - timedelta(days=RECENT_OBSERVATION_DAYS)
    bounds = [since + timedelta(days=round(i * RECENT_OBSERVATION_DAYS / SLICES)) for i in range(SLICES)]
    ranges = [f"date=ge{bounds[-1].isoformat()}"]
    ranges += [f"date=ge{lo.isoformat()}&date=lt{hi.isoformat()}"
               for lo, hi in reversed(list(zip(bounds, bounds[1:], strict=False)))]
    return [query.replace(f"date=ge{since.isoformat()}", dates) for dates in ranges]


# What each prefetch key holds, in words a clinician reads on a card when it is missing.
KEY_DESCRIPTIONS = {
    "patient": "patient demographics (age, sex)",
    "conditions": "problem list and diagnoses",
    "labs": "laboratory results",
    "vitalSigns": "vital signs (temperature, weight)",
    "socialHistory": "social history (smoking status)",
    "survey": "questionnaire answers",
    "examObservations": "examination findings",
    "encounters": "encounters",
    "procedures": "procedures (physiotherapy, cancer treatment, surgery)",
    "medications": "medication orders",
    "medicationStatements": "medication statements",
    "medicationAdministrations": "medication administrations (e.g. chemotherapy infusions)",
    UNCATEGORISED_KEY: "observations without a category (e.g. symptoms typed into a flowsheet)",
    "activeServiceRequests": "active orders (labs already ordered are not suggested again)",
    NOTES_KEY: "clinical notes",
    REPORTS_KEY: "imaging and pathology reports",
}

RESOURCE_TYPES_READ = ("Patient", "Condition", "Observation", "Encounter", "Procedure", "MedicationRequest",
                       "MedicationStatement", "MedicationAdministration", "Medication", "ServiceRequest",
                       "DocumentReference", "DiagnosticReport", "Binary")
SCOPES = " ".join(f"patient/{t}.read" for t in RESOURCE_TYPES_READ)
USAGE = (
    "When prefetch is incomplete the service reads the missing data from fhirServer with the "
    "fhirAuthorization token; it needs SMART scopes "
    + SCOPES
    + " (or the user/ equivalents; patient/*.rs in SMART v2). Medications referenced by a request, "
    "statement or administration and not included in its search are read as Medication/<id>; the "
    "text of a clinical note or report kept as a Binary on fhirServer is read as Binary/<id>. "
    "Patient and Conditions are required; without them the service answers 412."
)


@dataclass(frozen=True)
class Service:
    id: str
    hook: str
    title: str
    description: str

    def discovery_entry(self) -> dict:
        return {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": dict(prefetch_templates()),
            "usageRequirements": USAGE,
        }

    @property
    def is_order_hook(self) -> bool:
        return self.hook in ("order-select", "order-sign")


SERVICES: dict[str, Service] = {
    s.id: s
    for s in (
        Service(
            "lbp-patient-view",
            "patient-view",
            "Low back pain red flags (chart)",
            "When a chart opens for a patient with current low back pain, checks the record for red flags "
            "of cancer and of spinal cord or cauda equina compression and recommends the next step.",
        ),
        Service(
            "lbp-encounter-start",
            "encounter-start",
            "Low back pain red flags (encounter start)",
            "When a back-pain encounter starts, checks the record for red flags of cancer and of spinal "
            "cord or cauda equina compression and recommends the next step.",
        ),
        Service(
            "lbp-imaging-order-select",
            "order-select",
            "Lumbar spine imaging appropriateness (order select)",
            "When lumbar-spine imaging is selected, rates the order against the ACR Appropriateness "
            "Criteria for low back pain using the patient's red flags and suggests the right study.",
        ),
        Service(
            "lbp-imaging-order-sign",
            "order-sign",
            "Lumbar spine imaging appropriateness (order sign)",
            "When lumbar-spine imaging is signed, rates the order against the ACR Appropriateness "
            "Criteria for low back pain using the patient's red flags and suggests the right study.",
        ),
    )
}


def discovery() -> dict:
    return {"services": [s.discovery_entry() for s in SERVICES.values()]}


_TOKEN = re.compile(r"\{\{\s*context\.(\w+)\s*\}\}")


def resolve_template(template: str, context: dict) -> str | None:
    """Fill context tokens; None when a token has no string value in the context."""
    missing = False

    def fill(match: re.Match) -> str:
        nonlocal missing
        value = context.get(match.group(1))
        if not isinstance(value, str) or not value:
            missing = True
            return ""
        return value

    resolved = _TOKEN.sub(fill, template)
    return None if missing else resolved
