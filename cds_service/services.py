"""The four CDS services, declared once; discovery and prefetch resolution are derived from here."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from fhir_mappings.record import OBSERVATION_VALUE_SETS
from fhir_mappings.terminology import value_set

LOINC = "http://loinc.org"

# Prefetch keys the clinical core reads. Patient and Conditions are required: without them
# applicability (does this patient have low back pain?) cannot be decided.
REQUIRED_KEYS = ("patient", "conditions")


@cache
def _observation_codes() -> str:
    codes: list[str] = []
    for name in OBSERVATION_VALUE_SETS:
        for code in value_set(name).codes_for(LOINC):
            token = f"{LOINC}|{code}"
            if token not in codes:
                codes.append(token)
    return ",".join(codes)


@cache
def prefetch_templates() -> dict[str, str]:
    """CDS Hooks 2.0 prefetch templates: only context tokens, no FHIRPath (3.0) expressions."""
    return {
        "patient": "Patient/{{context.patientId}}",
        "conditions": "Condition?patient={{context.patientId}}",
        "observations": f"Observation?patient={{{{context.patientId}}}}&code={_observation_codes()}",
        "examObservations": "Observation?patient={{context.patientId}}&category=exam",
        "encounters": "Encounter?patient={{context.patientId}}",
        "procedures": "Procedure?patient={{context.patientId}}",
        "medications": "MedicationRequest?patient={{context.patientId}}",
        "activeServiceRequests": "ServiceRequest?patient={{context.patientId}}&status=active",
    }


# What each prefetch key holds, in words a clinician reads on a card when it is missing.
KEY_DESCRIPTIONS = {
    "patient": "patient demographics (age, sex)",
    "conditions": "problem list and diagnoses",
    "observations": "labs, vital signs and smoking status",
    "examObservations": "examination findings",
    "encounters": "encounters",
    "procedures": "procedures (physiotherapy, cancer treatment, surgery)",
    "medications": "medication orders",
    "activeServiceRequests": "active orders (labs already ordered are not suggested again)",
}

SCOPES = (
    "patient/Patient.read patient/Condition.read patient/Observation.read patient/Encounter.read "
    "patient/Procedure.read patient/MedicationRequest.read patient/ServiceRequest.read"
)
USAGE = (
    "When prefetch is incomplete the service reads the missing data from fhirServer with the "
    "fhirAuthorization token; it needs SMART scopes "
    + SCOPES
    + " (or the user/ equivalents). Patient and Conditions are required; without them the "
    "service answers 412."
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
