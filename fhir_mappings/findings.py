"""FHIR resources of one patient → plain clinical findings, with the record each came from.

This module knows FHIR shapes, statuses, dates, codes and units; it makes no clinical decision
(thresholds and tiers live in cards/assess.py). Statuses respected here:
- Condition: verificationStatus refuted / entered-in-error is ignored; provisional, differential and
  unconfirmed are kept as *suspected*; clinicalStatus inactive / remission / resolved is *history*.
- Observation: entered-in-error, cancelled and registered are ignored; a preliminary result is used
  only when no final / amended / corrected result of the same analyte exists.
- MedicationRequest / Procedure / Encounter: entered-in-error, cancelled, not-done are ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import cache
from pathlib import Path

from . import terminology
from .record import PatientRecord
from .terminology import coding_label, value_set
from .units import quantity_value

CANCER_CONCEPTS = ("malignancy", "cancer-personal-history", "metastatic-disease", "myeloma")


@cache
def value_sets_read_from(resource: str, element: str | None = None) -> tuple[str, ...]:
    """The value sets whose ``readFrom`` names this resource (``Condition``, ``Observation``,
    ``Procedure``, ``Encounter``, or ``medication`` for every medication resource), and this element.

    A value set with an empty ``readFrom`` is a qualifier the rules apply to a finding's text."""
    names = []
    for name in terminology.all_value_sets():
        path = Path(terminology.VALUESET_DIR) / f"{name}.json"
        read_from = json.loads(path.read_text(encoding="utf-8")).get("readFrom") or {}
        if resource in read_from and (element is None or element in read_from[resource]):
            names.append(name)
    return tuple(names)


IGNORED_VERIFICATION = {"refuted", "entered-in-error"}
SUSPECTED_VERIFICATION = {"provisional", "differential", "unconfirmed"}
ACTIVE_CLINICAL = {"active", "recurrence", "relapse"}
FINAL_OBSERVATION = {"final", "amended", "corrected"}
USABLE_OBSERVATION = FINAL_OBSERVATION | {"preliminary"}
IGNORED_REQUEST = {"entered-in-error", "cancelled", "revoked", "draft"}
LONG_TERM_DAYS = 28  # systemic steroids for 4 weeks or more count as immunosuppression
IGNORED_PROCEDURE = {"entered-in-error", "not-done", "preparation"}
IGNORED_ENCOUNTER = {"entered-in-error", "cancelled"}
# Answers that say a finding is absent: SNOMED CT Negative, Absent, No; LOINC answer LA32-8 "No".
NEGATIVE_ANSWERS = {"260385009", "272519000", "373067005", "2667000", "LA32-8", "N", "NEG", "no", "false", "absent"}
NEGATIVE_WORDS = {"no", "none", "absent", "negative", "not present", "denied", "denies", "nil", "false", "normal",
                  "not seen", "not found"}


@dataclass(frozen=True)
class Evidence:
    """Where a finding came from, as a clinician reads it on a card."""

    reference: str  # "Condition/c2"
    label: str  # "Malignant neoplasm of prostate (ICD-10-CM C61)"
    date: date | None = None
    value: str | None = None  # "48 ng/mL"
    how: str = "code"  # code | text | derived
    status: str | None = None  # "provisional", "resolved", "preliminary", ...


@dataclass(frozen=True)
class Finding:
    concept: str
    evidence: Evidence
    active: bool = True  # False: history (resolved, remission, inactive)
    suspected: bool = False
    onset: date | None = None
    last_activity: date | None = None  # latest of abatement and onset
    recorded: date | None = None  # recordedDate: the date of last resort
    text: str = ""  # every text on the source record, for modifiers such as "bilateral"
    remission: bool = False


@dataclass(frozen=True)
class LabResult:
    analyte: str
    value: float  # in the analyte's canonical unit
    unit: str
    evidence: Evidence
    reference_high: float | None = None
    reference_low: float | None = None
    preliminary: bool = False
    moment: tuple = ()  # (effective instant, issued instant, status rank): orders results of one day


@dataclass
class Facts:
    today: date
    age: int | None
    sex: str | None
    lbp: list[Finding] = field(default_factory=list)
    lbp_onset: date | None = None
    findings: list[Finding] = field(default_factory=list)
    labs: dict[str, LabResult] = field(default_factory=dict)  # latest usable result per analyte
    series: dict[str, list[LabResult]] = field(default_factory=dict)  # every usable result, oldest first
    smoking_status: Finding | None = None  # latest smoking-status answer (current or not)
    smoking_current: bool | None = None
    lbp_encounters: list[Finding] = field(default_factory=list)  # encounters for LBP (not the current one)
    orders: list = field(default_factory=list)  # fhir_mappings.orders.ImagingOrder, filled by the caller
    unavailable: list[str] = field(default_factory=list)
    patient_reference: str | None = None

    def having(self, *concepts: str) -> list[Finding]:
        return [f for f in self.findings if f.concept in concepts]


# ---------------------------------------------------------------- dates

def parse_date(value, *, end: bool = False) -> date | None:
    """A FHIR date/dateTime/instant → date. Partial dates become the first (or, end=True, last) day."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    try:
        year = int(value[:4])
        if len(value) >= 10:
            return date(year, int(value[5:7]), int(value[8:10]))
        if len(value) >= 7:
            month = int(value[5:7])
            if not end:
                return date(year, month, 1)
            nxt = date(year + (month == 12), month % 12 + 1, 1)
            return date.fromordinal(nxt.toordinal() - 1)
        return date(year, 12, 31) if end else date(year, 1, 1)
    except ValueError:
        return None


def age_on(birth: date | None, today: date) -> int | None:
    if birth is None:
        return None
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


def _status_code(concept) -> str | None:
    if not isinstance(concept, dict):
        return None
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict) and isinstance(coding.get("code"), str):
            return coding["code"]
    return None


def _text_or_none(value) -> str | None:
    return value if isinstance(value, str) else None


def _ref(resource: dict) -> str:
    return f"{resource.get('resourceType', 'Resource')}/{resource.get('id', '?')}"


def _texts(resource: dict, *concepts) -> str:
    parts = []
    for concept in concepts:
        if isinstance(concept, dict):
            if isinstance(concept.get("text"), str):
                parts.append(concept["text"])
            codings = concept.get("coding") if isinstance(concept.get("coding"), list) else []
            for coding in codings:
                if isinstance(coding, dict) and isinstance(coding.get("display"), str):
                    parts.append(coding["display"])
    notes = _notes(resource)
    return " | ".join(parts + ([notes] if notes else []))


def _notes(resource: dict) -> str:
    notes = resource.get("note") if isinstance(resource.get("note"), list) else []
    return " ".join(n["text"] for n in notes if isinstance(n, dict) and isinstance(n.get("text"), str))


def _match(name: str, concept, extra_text: str = ""):
    vs = value_set(name)
    found = vs.match(concept) if isinstance(concept, dict) else None
    if found is None and extra_text:
        found = vs.match_text(extra_text)
    return found


def _label(concept, found) -> str:
    label = coding_label(concept) if isinstance(concept, dict) else ""
    if found is not None and found.how == "text" and found.display and found.display.lower() not in label.lower():
        label = f"{label} (\"{found.display}\")" if label else f"\"{found.display}\""
    return label or "(no text)"


# ---------------------------------------------------------------- conditions

def _condition_findings(condition: dict) -> list[Finding]:
    verification = _status_code(condition.get("verificationStatus"))
    if verification in IGNORED_VERIFICATION:
        return []
    clinical = _status_code(condition.get("clinicalStatus"))
    abatement = parse_date(condition.get("abatementDateTime")) or parse_date(
        (condition.get("abatementPeriod") or {}).get("end") if isinstance(condition.get("abatementPeriod"), dict)
        else None)
    if clinical is None:
        active = abatement is None and not condition.get("abatementString")
    else:
        active = clinical in ACTIVE_CLINICAL
    onset = parse_date(condition.get("onsetDateTime")) or parse_date(
        (condition.get("onsetPeriod") or {}).get("start") if isinstance(condition.get("onsetPeriod"), dict)
        else None)
    recorded = parse_date(condition.get("recordedDate"))
    dated = [d for d in (abatement, parse_date(condition.get("onsetDateTime"), end=True), onset) if d]
    last_activity = max(dated) if dated else None
    code = condition.get("code")
    notes = _notes(condition)
    text = _texts(condition, code)
    status = verification if verification in SUSPECTED_VERIFICATION else (clinical if not active else None)

    matched: dict[str, object] = {}
    with_notes = value_sets_read_from("Condition", "note")
    for name in value_sets_read_from("Condition"):
        # Notes are read where the value set says so (low back pain itself stays coded or titled).
        found = _match(name, code, notes if name in with_notes else "")
        if found is not None:
            matched[name] = found
    history = matched.get("cancer-personal-history")
    if history is not None and history.how == "code":
        matched.pop("malignancy", None)  # "Personal history of malignant neoplasm" is history, not active
    if "malignancy" in matched or "cancer-personal-history" in matched:
        if _match("non-melanoma-skin-cancer", code) is not None:
            matched.pop("malignancy", None)
            matched.pop("cancer-personal-history", None)
    # A recurrence keeps the first episode's onset in many EHRs: the current episode then starts at
    # the recurrence's recordedDate, or is unknown.
    episode_onset = onset
    if clinical in ("recurrence", "relapse"):
        episode_onset = recorded if recorded and (onset is None or recorded > onset) else None
    out = []
    for name, found in matched.items():
        is_history = name == "cancer-personal-history"
        if name == "low-back-pain":
            out.append(Finding(name, Evidence(_ref(condition), _label(code, found), episode_onset or recorded, None,
                                              found.how, status),
                               active=active, suspected=verification in SUSPECTED_VERIFICATION,
                               onset=episode_onset if clinical in ("recurrence", "relapse") else (onset or recorded),
                               last_activity=last_activity, recorded=recorded, text=text))
            continue
        out.append(Finding(
            concept=name,
            evidence=Evidence(_ref(condition), _label(code, found), onset or recorded, None, found.how, status),
            active=active and not is_history,
            suspected=verification in SUSPECTED_VERIFICATION,
            onset=onset or (recorded if name in value_sets_read_from("Observation", "valueCodeableConcept") else None),
            last_activity=last_activity,
            recorded=recorded,
            text=text,
            remission=clinical == "remission",
        ))
    return out


# ---------------------------------------------------------------- observations

@cache
def _analytes() -> dict[str, dict]:
    data = json.loads((Path(__file__).parent / "analytes.json").read_text(encoding="utf-8"))
    return data["analytes"]


def _effective(observation: dict) -> date | None:
    period = observation.get("effectivePeriod")
    return (parse_date(observation.get("effectiveDateTime"))
            or parse_date(observation.get("effectiveInstant"))
            or (parse_date(period.get("start")) if isinstance(period, dict) else None)
            or parse_date(observation.get("issued")))


def _format_value(value: float, unit: str) -> str:
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{text} {unit}"


def _original_value(observation: dict) -> str | None:
    q = observation.get("valueQuantity")
    if q is None and isinstance(observation.get("valueString"), str):
        return f"\"{observation['valueString'].strip()}\""
    if not isinstance(q, dict) or not isinstance(q.get("value"), int | float):
        return None
    unit = q.get("unit") or q.get("code") or ""
    return f"{q.get('comparator', '')}{q['value']} {unit}".strip()


_STRING_VALUE = re.compile(r"^\s*(<=|>=|<|>)?\s*(\d+(?:\.\d+)?)\s*([^\d\s].*)?$")


def _string_quantity(text) -> dict | None:
    """'>100', '> 100 ng/mL', '9.5 g/dl' in valueString (assays above their range report so) → a Quantity."""
    match = _STRING_VALUE.match(text) if isinstance(text, str) else None
    if not match:
        return None
    quantity = {"value": float(match.group(2))}
    if match.group(1):
        quantity["comparator"] = match.group(1)
    if match.group(3):
        quantity["unit"] = match.group(3).strip()
    return quantity


def _instant(value) -> datetime | None:
    if not isinstance(value, str) or len(value) < 4:
        return None
    try:
        moment = datetime.fromisoformat(value) if len(value) > 10 else None
    except ValueError:
        moment = None
    if moment is None:
        day = parse_date(value)
        return datetime(day.year, day.month, day.day, tzinfo=UTC) if day else None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


STATUS_RANK = {"preliminary": 0, "final": 1, "amended": 2, "corrected": 2}
_EPOCH = datetime(1, 1, 1, tzinfo=UTC)


def _moment(observation: dict) -> tuple:
    period = observation.get("effectivePeriod")
    effective = (_instant(observation.get("effectiveDateTime")) or _instant(observation.get("effectiveInstant"))
                 or (_instant(period.get("start")) if isinstance(period, dict) else None)
                 or _instant(observation.get("issued")) or _EPOCH)
    return effective, _instant(observation.get("issued")) or _EPOCH, STATUS_RANK.get(observation.get("status"), 0)


def _lab_result(observation: dict, analyte: str, spec: dict) -> LabResult | None:
    quantity = observation.get("valueQuantity")
    if quantity is None:
        quantity = _string_quantity(observation.get("valueString"))
        if quantity is not None and "unit" not in quantity:
            quantity["code"], quantity["system"] = spec["unit"], "http://unitsofmeasure.org"
    value = quantity_value(quantity, spec["unit"], molar_mass=spec.get("molar_mass"))
    if value is None:
        return None
    high = low = None
    for rng in observation.get("referenceRange") or []:
        if not isinstance(rng, dict):
            continue
        if isinstance(rng.get("high"), dict):
            high = quantity_value(rng["high"], spec["unit"], molar_mass=spec.get("molar_mass"))
        if isinstance(rng.get("low"), dict):
            low = quantity_value(rng["low"], spec["unit"], molar_mass=spec.get("molar_mass"))
        break
    original = _original_value(observation) or ""
    shown = _format_value(value, spec["unit"])
    if original and original.replace(" ", "") != shown.replace(" ", ""):
        shown = f"{original} (= {shown})"
    status = observation.get("status")
    return LabResult(
        analyte=analyte, value=value, unit=spec["unit"],
        evidence=Evidence(_ref(observation), coding_label(observation.get("code")), _effective(observation),
                          shown, "code", None if status in FINAL_OBSERVATION else status),
        reference_high=high, reference_low=low, preliminary=status not in FINAL_OBSERVATION,
        moment=_moment(observation),
    )


def _negative(observation: dict) -> bool:
    if observation.get("valueBoolean") is False:
        return True
    value_text = observation.get("valueString")
    if isinstance(value_text, str) and value_text.strip().lower().rstrip(".") in NEGATIVE_WORDS:
        return True
    answer = observation.get("valueCodeableConcept")
    if isinstance(answer, dict):
        for coding in answer.get("coding") or []:
            if isinstance(coding, dict) and str(coding.get("code")) in NEGATIVE_ANSWERS:
                return True
            if isinstance(coding, dict) and str(coding.get("display", "")).strip().lower() in NEGATIVE_WORDS:
                return True
        if str(answer.get("text", "")).strip().lower() in NEGATIVE_WORDS:
            return True
    for interp in observation.get("interpretation") or []:
        if _status_code(interp) in {"N", "NEG", "ND"}:
            return True
    return False


def _exam_findings(observation: dict) -> list[Finding]:
    """Symptoms and signs recorded as Observations (code or coded/text value names the finding)."""
    if _negative(observation):
        return []
    when = _effective(observation)
    value_cc = observation.get("valueCodeableConcept")
    value_text = observation.get("valueString") if isinstance(observation.get("valueString"), str) else ""
    notes = " ".join(t for t in (value_text, _notes(observation)) if t)
    text = _texts(observation, observation.get("code"), value_cc) + (" | " + value_text if value_text else "")
    out = []
    for name in value_sets_read_from("Observation", "valueCodeableConcept"):
        found = None
        source = None
        for concept in (value_cc, observation.get("code")):
            if isinstance(concept, dict):
                found = value_set(name).match(concept)
                if found:
                    source = concept
                    break
        if found is None and notes:
            found = value_set(name).match_text(notes)
        if found is not None:
            label = _label(source, found) if source else f"\"{found.display}\""
            out.append(Finding(name, Evidence(_ref(observation), label, when, value_text or None, found.how),
                               onset=when, last_activity=when, text=text))
    return out


def _read_observation(obs: dict, facts: Facts, by_analyte: dict, smoking: list) -> list:
    status = obs.get("status")
    if status not in USABLE_OBSERVATION:
        return []
    code = obs.get("code")
    analyte_found = False
    for analyte, spec in _analytes().items():
        if value_set(spec["value_set"]).match_code(code) is not None:
            result = _lab_result(obs, analyte, spec)
            if result is not None:
                by_analyte.setdefault(analyte, []).append(result)
            analyte_found = True
            break
    if analyte_found:
        return []
    if value_set("smoking-status").match(code) is not None and status in FINAL_OBSERVATION:
        answer = obs.get("valueCodeableConcept")
        when = _effective(obs)
        current = value_set("smoking-current").match(answer) if isinstance(answer, dict) else None
        not_current = (value_set("smoking-former-or-never").match(answer)
                       if isinstance(answer, dict) else None)
        if current or not_current:
            finding = Finding("smoking-status", Evidence(_ref(obs), coding_label(answer), when), onset=when)
            smoking.append((when, finding, bool(current) and not not_current))
        return []
    if status in FINAL_OBSERVATION or status == "preliminary":
        facts.findings.extend(_exam_findings(obs))
    return []


def _observations(observations: Iterable[dict], facts: Facts) -> None:
    by_analyte: dict[str, list[LabResult]] = {}
    smoking: list[tuple[date | None, Finding, bool]] = []
    for obs in observations:
        _safely(facts, obs, lambda o: _read_observation(o, facts, by_analyte, smoking))
    for analyte, results in by_analyte.items():
        # A preliminary result is superseded by a final (amended, corrected) one of the same or a later
        # time; a preliminary newer than every final one is kept, and labelled preliminary on the card.
        latest_final = max((r.moment[0] for r in results if not r.preliminary), default=None)
        usable = [r for r in results if not r.preliminary or latest_final is None or r.moment[0] > latest_final]
        usable.sort(key=lambda r: r.moment)
        facts.series[analyte] = usable
        facts.labs[analyte] = usable[-1]
    if smoking:
        smoking.sort(key=lambda s: s[0] or date.min)
        _, finding, current = smoking[-1]
        facts.smoking_status = finding
        facts.smoking_current = current


# ---------------------------------------------------------------- medications, procedures, encounters

def _stated_reasons(resource: dict) -> list[dict]:
    """reasonCode concepts, and reasonReference displays as concepts: why a drug or procedure was given."""
    reasons = [r for r in resource.get("reasonCode") or [] if isinstance(r, dict)] \
        if isinstance(resource.get("reasonCode"), list) else []
    refs = resource.get("reasonReference") if isinstance(resource.get("reasonReference"), list) else []
    reasons += [{"text": r["display"]} for r in refs if isinstance(r, dict) and isinstance(r.get("display"), str)]
    return reasons


def _for_cancer(resource: dict) -> bool:
    """A cancer drug or operation given for a stated non-cancer reason (letrozole for infertility,
    leuprolide for endometriosis) does not show a cancer; with no stated reason it does."""
    reasons = _stated_reasons(resource)
    return not reasons or any(value_set(name).match(reason) for reason in reasons for name in CANCER_CONCEPTS)


def _days(start: date | None, end: date | None) -> int | None:
    return (end - start).days if start and end else None


def _long_term(request: dict, when: date | None, today: date) -> bool:
    """Long-term use: ordered as continuous, supplied or valid for 28 days or more, or active since then."""
    course = _status_code(request.get("courseOfTherapyType"))
    dispense = request.get("dispenseRequest") if isinstance(request.get("dispenseRequest"), dict) else {}
    supply = dispense.get("expectedSupplyDuration") if isinstance(dispense.get("expectedSupplyDuration"), dict) else {}
    supply_days = quantity_value(supply, "d") if supply else None
    period = dispense.get("validityPeriod") if isinstance(dispense.get("validityPeriod"), dict) else {}
    valid_days = _days(parse_date(period.get("start")), parse_date(period.get("end")))
    running_days = _days(when, today) if request.get("status") in ("active", "on-hold", None) else None
    return (course == "continuous" or any(d is not None and d >= LONG_TERM_DAYS
                                          for d in (supply_days, valid_days, running_days)))


def _medication_findings(request: dict, today: date) -> list[Finding]:
    if request.get("status") in IGNORED_REQUEST:
        return []
    concept = request.get("medicationCodeableConcept")
    if not isinstance(concept, dict):
        ref = request.get("medicationReference")
        concept = {"text": ref.get("display")} if isinstance(ref, dict) and ref.get("display") else None
    if concept is None:
        return []
    when = parse_date(request.get("authoredOn"))
    period = (request.get("dispenseRequest") or {}).get("validityPeriod") if isinstance(
        request.get("dispenseRequest"), dict) else None
    end = parse_date(period.get("end")) if isinstance(period, dict) else None
    active = request.get("status") in ("active", "on-hold", None)
    out = []
    for name in value_sets_read_from("medication"):
        found = value_set(name).match(concept)
        if found is None:
            continue
        if name == "cancer-treatment" and not _for_cancer(request):
            continue
        if name == "immunosuppression" and value_set("systemic-corticosteroid").match(concept) \
                and not _long_term(request, when, today):
            continue  # a short steroid course is not immunosuppression
        out.append(Finding(name, Evidence(_ref(request), _label(concept, found), when, None, found.how,
                                          _text_or_none(request.get("status"))),
                           active=active, onset=when,
                           last_activity=max([d for d in (when, end) if d], default=None),
                           text=_texts(request, concept)))
    return out


def _procedure_findings(procedure: dict) -> list[Finding]:
    if procedure.get("status") in IGNORED_PROCEDURE:
        return []
    period = procedure.get("performedPeriod")
    start = parse_date(procedure.get("performedDateTime")) or (
        parse_date(period.get("start")) if isinstance(period, dict) else None)
    end = (parse_date(period.get("end")) if isinstance(period, dict) else None) or start
    code = procedure.get("code")
    out = []
    for name in value_sets_read_from("Procedure"):
        found = _match(name, code)
        if name == "cancer-treatment" and found is not None and not _for_cancer(procedure):
            continue
        if found is not None:
            out.append(Finding(name, Evidence(_ref(procedure), _label(code, found), start, None, found.how,
                                              _text_or_none(procedure.get("status"))),
                               active=procedure.get("status") == "in-progress", onset=start, last_activity=end,
                               text=_texts(procedure, code)))
    return out


def _encounter_lbp(encounter: dict, lbp_condition_ids: set[str]) -> Finding | None:
    if encounter.get("status") in IGNORED_ENCOUNTER:
        return None
    period = encounter.get("period") if isinstance(encounter.get("period"), dict) else {}
    start = parse_date(period.get("start"))
    for reason in encounter.get("reasonCode") or []:
        found = value_set("low-back-pain").match(reason)
        if found is not None:
            return Finding("low-back-pain", Evidence(_ref(encounter), f"Encounter reason: {_label(reason, found)}",
                                                     start, None, found.how), onset=start, last_activity=start)
    for reason in encounter.get("reasonReference") or []:
        ref = reason.get("reference") if isinstance(reason, dict) else None
        if isinstance(ref, str) and ref.split("/")[-1] in lbp_condition_ids and ref.startswith("Condition"):
            return Finding("low-back-pain", Evidence(_ref(encounter), "Encounter reason: low back pain (" + ref + ")",
                                                     start), onset=start, last_activity=start)
    return None


# ---------------------------------------------------------------- the whole record

def extract(record: PatientRecord, today: date) -> Facts:
    patient = record.patient or {}
    gender = patient.get("gender")
    facts = Facts(
        today=today,
        age=age_on(parse_date(patient.get("birthDate")), today),
        sex=gender if gender in ("male", "female") else None,
        unavailable=list(record.unavailable),
        patient_reference=f"Patient/{patient['id']}" if isinstance(patient.get("id"), str) else None,
    )
    lbp_condition_ids: set[str] = set()
    for condition in record.of_type("Condition"):
        for finding in _safely(facts, condition, _condition_findings):
            if finding.concept == "low-back-pain":
                if finding.active:
                    facts.lbp.append(finding)
                    lbp_condition_ids.add(str(condition.get("id")))
            else:
                facts.findings.append(finding)
    _observations(record.of_type("Observation"), facts)
    for request in record.of_type("MedicationRequest"):
        facts.findings.extend(_safely(facts, request, lambda r: _medication_findings(r, today)))
    for procedure in record.of_type("Procedure"):
        facts.findings.extend(_safely(facts, procedure, _procedure_findings))
    for encounter in record.of_type("Encounter"):
        found = _safely(facts, encounter, lambda e: [_encounter_lbp(e, lbp_condition_ids)])
        finding = found[0] if found else None
        if finding is None:
            continue
        if record.encounter_id and encounter.get("id") == record.encounter_id:
            facts.lbp.append(finding)
        elif finding.onset is None or finding.onset <= today:
            facts.lbp_encounters.append(finding)
    onsets = [f.onset for f in facts.lbp if f.onset]
    facts.lbp_onset = min(onsets) if onsets else None
    return facts


def _safely(facts: Facts, resource: dict, read) -> list:
    """A malformed resource is skipped and named on the card, never a crash of the whole request."""
    try:
        return read(resource)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError):
        facts.unavailable.append(f"{_ref(resource)}: malformed, not read")
        return []
