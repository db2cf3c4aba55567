"""Synthea-shaped patients of three sizes, generated in code (deterministic for a seed).

Shaped like Synthea's output: urn-style UUID ids, US Core profiles in `meta`, SNOMED CT problems with
clinical and verification statuses, LOINC vital signs and labs with UCUM quantities, ambulatory
encounters with a class and type, procedures and medication requests referencing their encounter.
Every patient is a 67-year-old man with new low back pain and prostate cancer treated years ago (an
imaging red flag), so each call goes all the way to a card; the rest is the long ordinary history a
real chart carries. Observations use the LOINC codes the service's prefetch template asks for (what
an EHR's search would return), plus a few exam findings.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import date, timedelta

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


@dataclass(frozen=True)
class Size:
    name: str
    conditions: int
    observations: int
    encounters: int
    procedures: int
    medications: int


SIZES = {
    "small": Size("small", conditions=4, observations=20, encounters=3, procedures=2, medications=2),
    "typical": Size("typical", conditions=30, observations=300, encounters=20, procedures=10, medications=15),
    "large": Size("large", conditions=100, observations=2000, encounters=250, procedures=80, medications=120),
}

# Synthea's common problems (SNOMED CT), resolved or active.
BACKGROUND_PROBLEMS = [
    ("444814009", "Viral sinusitis (disorder)"), ("195662009", "Acute viral pharyngitis (disorder)"),
    ("10509002", "Acute bronchitis (disorder)"), ("38341003", "Hypertension"),
    ("55822004", "Hyperlipidemia"), ("15777000", "Prediabetes"),
    ("162864005", "Body mass index 30+ - obesity (finding)"),
    ("40055000", "Chronic sinusitis (disorder)"), ("307731004", "Injury of tendon of the rotator cuff of shoulder"),
    ("283371005", "Laceration of forearm"), ("44465007", "Sprain of ankle"), ("68496003", "Polyp of colon"),
    ("713197008", "Recurrent rectal polyp"), ("267036007", "Dyspnea (finding)"), ("66383009", "Gingivitis (disorder)"),
    ("80394007", "Hyperglycemia (disorder)"), ("230690007", "Stroke"), ("78275009", "Sleep apnea (disorder)"),
]

# (LOINC, display, UCUM unit, typical low, typical high)
OBSERVATIONS = [
    ("29463-7", "Body Weight", "kg", 78.0, 92.0),
    ("8310-5", "Body temperature", "Cel", 36.3, 37.2),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 13.2, 16.5),
    ("4544-3", "Hematocrit [Volume Fraction] of Blood by Automated count", "%", 39.0, 49.0),
    ("17861-6", "Calcium [Mass/volume] in Serum or Plasma", "mg/dL", 8.6, 10.2),
    ("6768-6", "Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 45.0, 115.0),
    ("4537-7", "Erythrocyte sedimentation rate by Westergren method", "mm/h", 4.0, 18.0),
    ("2857-1", "Prostate specific Ag [Mass/volume] in Serum or Plasma", "ng/mL", 0.05, 1.5),
]
MEDICATIONS = [("314076", "lisinopril 10 MG Oral Tablet"), ("316672", "Simvastatin 10 MG Oral Tablet"),
               ("860975", "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet"),
               ("313782", "Acetaminophen 325 MG Oral Tablet"), ("198405", "Ibuprofen 400 MG Oral Tablet")]
PROCEDURES = [("430193006", "Medication Reconciliation (procedure)"), ("710824005", "Assessment of health and "
              "social care needs (procedure)"), ("73761001", "Colonoscopy"), ("274804006", "Evaluation of uterine "
              "fundal height")]


class _Maker:
    def __init__(self, seed: int, today: date):
        self.random = random.Random(seed)
        self.today = today

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.random.getrandbits(128), version=4))

    def day(self, within_days: int, at_least: int = 0) -> date:
        return self.today - timedelta(days=self.random.randint(at_least, max(at_least, within_days)))


def _meta(profile: str) -> dict:
    return {"profile": [f"http://hl7.org/fhir/us/core/StructureDefinition/{profile}"]}


def _coding(system: str, code: str, display: str) -> dict:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _condition(make: _Maker, patient: str, encounter: str, code: tuple[str, str], onset: date,
               abated: date | None = None, extra_coding: dict | None = None) -> dict:
    concept = _coding(SNOMED, *code)
    if extra_coding:
        concept["coding"].append(extra_coding)
    resource = {
        "resourceType": "Condition", "id": make.uuid(), "meta": _meta("us-core-condition-problems-health-concerns"),
        "clinicalStatus": _coding("http://terminology.hl7.org/CodeSystem/condition-clinical",
                                  "resolved" if abated else "active", "Resolved" if abated else "Active"),
        "verificationStatus": _coding("http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                      "confirmed", "Confirmed"),
        "category": [_coding("http://terminology.hl7.org/CodeSystem/condition-category", "encounter-diagnosis",
                             "Encounter Diagnosis")],
        "code": concept, "subject": {"reference": f"Patient/{patient}"},
        "encounter": {"reference": f"Encounter/{encounter}"},
        "onsetDateTime": f"{onset.isoformat()}T09:00:00+00:00", "recordedDate": f"{onset.isoformat()}T09:00:00+00:00",
    }
    if abated:
        resource["abatementDateTime"] = f"{abated.isoformat()}T09:00:00+00:00"
    return resource


def _observation(make: _Maker, patient: str, encounter: str, spec: tuple, when: date) -> dict:
    code, display, unit, low, high = spec
    category = "vital-signs" if code in ("29463-7", "8310-5") else "laboratory"
    return {
        "resourceType": "Observation", "id": make.uuid(),
        "meta": _meta("us-core-vital-signs" if category == "vital-signs" else "us-core-observation-lab"),
        "status": "final",
        "category": [_coding("http://terminology.hl7.org/CodeSystem/observation-category", category,
                             category.replace("-", " ").title())],
        "code": _coding(LOINC, code, display), "subject": {"reference": f"Patient/{patient}"},
        "encounter": {"reference": f"Encounter/{encounter}"},
        "effectiveDateTime": f"{when.isoformat()}T10:{make.random.randint(0, 59):02d}:00+00:00",
        "issued": f"{when.isoformat()}T11:00:00.000+00:00",
        "valueQuantity": {"value": round(make.random.uniform(low, high), 1), "unit": unit, "system": UCUM,
                          "code": unit},
    }


def _exam(make: _Maker, patient: str, encounter: str, when: date, text: str) -> dict:
    return {
        "resourceType": "Observation", "id": make.uuid(), "status": "final",
        "category": [_coding("http://terminology.hl7.org/CodeSystem/observation-category", "exam", "Exam")],
        "code": _coding(SNOMED, "364075005", "Neurological finding"),
        "subject": {"reference": f"Patient/{patient}"}, "encounter": {"reference": f"Encounter/{encounter}"},
        "effectiveDateTime": f"{when.isoformat()}T10:30:00+00:00", "valueString": text,
    }


def _encounter(make: _Maker, patient: str, when: date) -> dict:
    start = f"{when.isoformat()}T09:00:00+00:00"
    return {
        "resourceType": "Encounter", "id": make.uuid(), "meta": _meta("us-core-encounter"), "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "type": [_coding(SNOMED, "185349003", "Encounter for check up (procedure)")],
        "subject": {"reference": f"Patient/{patient}"},
        "period": {"start": start, "end": f"{when.isoformat()}T09:30:00+00:00"},
        "serviceProvider": {"reference": "Organization/synthea-clinic", "display": "SYNTHEA CLINIC"},
    }


def patient_resources(size: str, seed: int = 7, today: date | None = None) -> list[dict]:
    """The resources of one Synthea-shaped patient of the given size ('small', 'typical' or 'large')."""
    spec = SIZES[size]
    make = _Maker(seed, today or date.today())
    patient_id = make.uuid()
    birth = make.today.replace(year=make.today.year - 67) - timedelta(days=40)
    resources: list[dict] = [{
        "resourceType": "Patient", "id": patient_id, "meta": _meta("us-core-patient"),
        "identifier": [{"system": "https://github.com/synthetichealth/synthea", "value": make.uuid()}],
        "name": [{"use": "official", "family": "Kuhlman484", "given": ["Rodrigo242"], "prefix": ["Mr."]}],
        "gender": "male", "birthDate": birth.isoformat(),
        "address": [{"city": "Springfield", "state": "Massachusetts", "country": "US"}],
    }]
    history_days = 365 * (3 if size == "small" else 12 if size == "typical" else 30)
    encounters = [_encounter(make, patient_id, make.day(history_days, 1)) for _ in range(spec.encounters - 1)]
    current = _encounter(make, patient_id, make.today)
    current["status"] = "in-progress"
    current["reasonCode"] = [_coding(SNOMED, "279039007", "Low back pain")]
    encounters.append(current)
    resources += encounters

    def encounter_id() -> str:
        return make.random.choice(encounters)["id"]

    # The presenting problem and the red flag.
    resources.append(_condition(make, patient_id, current["id"], ("279039007", "Low back pain"),
                                make.today - timedelta(days=21),
                                extra_coding={"system": ICD10, "code": "M54.50",
                                              "display": "Low back pain, unspecified"}))
    resources.append(_condition(make, patient_id, encounter_id(), ("399068003", "Malignant tumor of prostate"),
                                make.today - timedelta(days=8 * 365)))
    for index in range(spec.conditions - 2):
        code = BACKGROUND_PROBLEMS[index % len(BACKGROUND_PROBLEMS)]
        onset = make.day(history_days, 30)
        abated = onset + timedelta(days=make.random.randint(7, 30)) if make.random.random() < 0.6 else None
        resources.append(_condition(make, patient_id, encounter_id(), code, onset, abated))

    exams = max(1, spec.observations // 50)
    for index in range(spec.observations - exams):
        kind = OBSERVATIONS[index % len(OBSERVATIONS)]
        resources.append(_observation(make, patient_id, encounter_id(), kind, make.day(history_days)))
    for _ in range(exams):
        resources.append(_exam(make, patient_id, current["id"], make.today, "Reflexes normal and symmetrical"))

    for index in range(spec.procedures):
        code = PROCEDURES[index % len(PROCEDURES)]
        when = make.day(history_days, 1)
        resources.append({
            "resourceType": "Procedure", "id": make.uuid(), "meta": _meta("us-core-procedure"), "status": "completed",
            "code": _coding(SNOMED, *code), "subject": {"reference": f"Patient/{patient_id}"},
            "encounter": {"reference": f"Encounter/{encounter_id()}"},
            "performedPeriod": {"start": f"{when.isoformat()}T09:10:00+00:00",
                                "end": f"{when.isoformat()}T09:25:00+00:00"},
        })
    for index in range(spec.medications):
        code = MEDICATIONS[index % len(MEDICATIONS)]
        when = make.day(history_days, 1)
        resources.append({
            "resourceType": "MedicationRequest", "id": make.uuid(), "meta": _meta("us-core-medicationrequest"),
            "status": "completed" if index else "active", "intent": "order",
            "medicationCodeableConcept": _coding(RXNORM, *code), "subject": {"reference": f"Patient/{patient_id}"},
            "encounter": {"reference": f"Encounter/{encounter_id()}"},
            "authoredOn": f"{when.isoformat()}T09:20:00+00:00",
            "requester": {"reference": "Practitioner/synthea-practitioner", "display": "Dr. Synthea"},
        })
    return resources


def as_transactions(resources: list[dict], per_bundle: int = 50) -> list[dict]:
    """PUT transaction Bundles to load a patient into a FHIR server (the test server takes 50 updates each)."""
    entries = [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
               for r in resources]
    return [{"resourceType": "Bundle", "type": "transaction", "entry": entries[i:i + per_bundle]}
            for i in range(0, len(entries), per_bundle)]
