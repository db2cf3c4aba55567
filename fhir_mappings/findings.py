"""FHIR resources of one patient → plain clinical findings, with the record each came from.

This module knows FHIR shapes, statuses, dates, codes and units; it makes no clinical decision
(thresholds and tiers live in cards/assess.py). Statuses respected here:
- Condition: verificationStatus refuted / entered-in-error is ignored; provisional, differential and
  unconfirmed are kept as *suspected*; clinicalStatus inactive / remission / resolved is *history*.
- Observation: entered-in-error, cancelled and registered are ignored; a preliminary result is used
  only when no final / amended / corrected result of the same analyte exists.
- MedicationRequest / Procedure / Encounter: entered-in-error, cancelled, not-done are ignored;
  MedicationStatement entered-in-error, not-taken and intended; MedicationAdministration
  entered-in-error and not-done.
- Observations older than RECENT_OBSERVATION_DAYS are not read (fetch mode does not ask for them
  either), unless categorised exam or social-history; lab results and vital signs never are. An
  encounter on the day of the request is never an earlier visit.
Odd data is skipped and named in ``Facts.unavailable`` rather than failing the call: a panel with
no results, a Medication reference that cannot be resolved, an answer too large to read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path

from . import terminology
from .dates import instant, parse_date
from .notes import Note, read_notes
from .record import RECENT_OBSERVATION_DAYS, UNWINDOWED_CATEGORIES, PatientRecord
from .terminology import coding_label, value_set
from .text import quote
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
IGNORED_STATEMENT = {"entered-in-error", "not-taken", "intended"}
IGNORED_ADMINISTRATION = {"entered-in-error", "not-done"}
MAX_TEXT_CHARS = 20_000  # an answer or note longer than this is not read (and said so)
MAX_COMPONENTS = 200
# Interpretation codes (v3-ObservationInterpretation) that say which side of the range a result is on.
LOW_INTERPRETATION = {"L", "LL", "LU", "<"}
HIGH_INTERPRETATION = {"H", "HH", "HU", ">"}
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
    how: str = "code"  # code | text | note | derived
    status: str | None = None  # "provisional", "resolved", "preliminary", ...
    quote: str | None = None  # a note's sentence, Markdown-escaped, the matched words in bold (text.quote)


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
    notes_unread: list[str] = field(default_factory=list)  # notes or reports not read (cap, format, fetch)
    patient_reference: str | None = None

    def having(self, *concepts: str) -> list[Finding]:
        return [f for f in self.findings if f.concept in concepts]


# ---------------------------------------------------------------- dates

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
    """The concept by code or its own text, else the free-text notes read as notes (text.counts)."""
    vs = value_set(name)
    found = vs.match(concept) if isinstance(concept, dict) else None
    if found is None and extra_text:
        found = vs.match_text(extra_text, note=True)
    return found


def _label(concept, found) -> str:
    label = coding_label(concept) if isinstance(concept, dict) else ""
    if found is not None and found.how == "text" and found.display and found.display.lower() not in label.lower():
        label = f"{label} (\"{found.display}\")" if label else f"\"{found.display}\""
    return label or "(no text)"


# ---------------------------------------------------------------- conditions

def _years_after(birth: date | None, years: float | None) -> date | None:
    if birth is None or years is None or not 0 <= years < 150:
        return None
    return birth + timedelta(days=round(years * 365.25))


AGE_UNITS = {"a": 1.0, "yr": 1.0, "year": 1.0, "years": 1.0, "mo": 1 / 12, "month": 1 / 12, "months": 1 / 12,
             "wk": 7 / 365.25, "week": 7 / 365.25, "weeks": 7 / 365.25, "d": 1 / 365.25, "day": 1 / 365.25,
             "days": 1 / 365.25}


def _age_years(age) -> float | None:
    """A FHIR Age (UCUM a, mo, wk, d) in years; a bare number is years."""
    if not isinstance(age, dict) or not isinstance(age.get("value"), int | float) or isinstance(age["value"], bool):
        return None
    unit = age.get("code") if isinstance(age.get("code"), str) else age.get("unit")
    factor = AGE_UNITS.get(unit.strip().lower(), None) if isinstance(unit, str) else 1.0
    return None if factor is None else age["value"] * factor


_YEAR_IN_TEXT = re.compile(r"(?<!\d)(19\d\d|20\d\d)(?!\d)")
_AGE_IN_TEXT = re.compile(r"(?:\bage[d]?\s*|\bat\s+)(\d{1,3})\b|\b(\d{1,3})\s*(?:years?\s*old|y/?o)\b")


def _string_date(text, birth: date | None) -> date | None:
    """'2005', 'in remission since 1986', 'cured at age 8', 'aged 12' → a date (the year's end, or the birthday)."""
    if not isinstance(text, str):
        return None
    year = _YEAR_IN_TEXT.search(text)
    if year:
        return date(int(year.group(1)), 12, 31)
    age = _AGE_IN_TEXT.search(text.lower())
    if age:
        return _years_after(birth, float(age.group(1) or age.group(2)))
    return None


def _condition_dates(condition: dict, birth: date | None) -> tuple[date | None, date | None, date | None]:
    """(onset, end of onset, abatement), from dateTime, Period, Age, Range of ages or a string."""
    onset_period = condition.get("onsetPeriod") if isinstance(condition.get("onsetPeriod"), dict) else {}
    onset_range = condition.get("onsetRange") if isinstance(condition.get("onsetRange"), dict) else {}
    onset_age = _years_after(birth, _age_years(condition.get("onsetAge")))
    onset = (parse_date(condition.get("onsetDateTime")) or parse_date(onset_period.get("start")) or onset_age
             or _years_after(birth, _age_years(onset_range.get("low")))
             or _string_date(condition.get("onsetString"), birth))
    onset_end = (parse_date(condition.get("onsetDateTime"), end=True) or onset_age
                 or _years_after(birth, _age_years(onset_range.get("high"))))
    abatement_period = condition.get("abatementPeriod") if isinstance(condition.get("abatementPeriod"), dict) else {}
    abatement_range = condition.get("abatementRange") if isinstance(condition.get("abatementRange"), dict) else {}
    abatement = (parse_date(condition.get("abatementDateTime")) or parse_date(abatement_period.get("end"))
                 or _years_after(birth, _age_years(condition.get("abatementAge")))
                 or _years_after(birth, _age_years(abatement_range.get("high")))
                 or _string_date(condition.get("abatementString"), birth))
    return onset, onset_end, abatement


def _abated(condition: dict) -> bool:
    return any(condition.get(k) not in (None, False) for k in (
        "abatementDateTime", "abatementAge", "abatementPeriod", "abatementRange", "abatementString",
        "abatementBoolean"))


def _condition_findings(condition: dict, birth: date | None = None) -> list[Finding]:
    verification = _status_code(condition.get("verificationStatus"))
    if verification in IGNORED_VERIFICATION:
        return []
    clinical = _status_code(condition.get("clinicalStatus"))
    onset, onset_end, abatement = _condition_dates(condition, birth)
    if clinical is None:
        active = not _abated(condition)
    else:
        active = clinical in ACTIVE_CLINICAL
    recorded = parse_date(condition.get("recordedDate"))
    dated = [d for d in (abatement, onset_end, onset) if d]
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


STATUS_RANK = {"preliminary": 0, "final": 1, "amended": 2, "corrected": 2}
_EPOCH = datetime(1, 1, 1, tzinfo=UTC)


def _moment(observation: dict) -> tuple:
    period = observation.get("effectivePeriod")
    effective = (instant(observation.get("effectiveDateTime")) or instant(observation.get("effectiveInstant"))
                 or (instant(period.get("start")) if isinstance(period, dict) else None)
                 or instant(observation.get("issued")) or _EPOCH)
    return effective, instant(observation.get("issued")) or _EPOCH, STATUS_RANK.get(observation.get("status"), 0)


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
            found = value_set(name).match_text(notes, note=True)
        if found is not None:
            label = _label(source, found) if source else f"\"{found.display}\""
            out.append(Finding(name, Evidence(_ref(observation), label, when, value_text or None, found.how),
                               onset=when, last_activity=when, text=text))
    return out


@dataclass
class _Readings:
    """What the Observations of one record yield before the latest result per analyte is chosen."""

    by_analyte: dict[str, list[LabResult]] = field(default_factory=dict)
    smoking: list[tuple[date | None, Finding, bool]] = field(default_factory=list)
    # Results with no value but an interpretation (H, L...): (analyte, side, evidence, moment)
    interpreted: list[tuple[str, str, Evidence, tuple]] = field(default_factory=list)
    observation_ids: set[str] = field(default_factory=set)


_PANEL_PARTS = ("component", "hasMember", "code", "interpretation", "referenceRange", "dataAbsentReason")


def _categories(observation: dict) -> set[str]:
    categories = observation.get("category") if isinstance(observation.get("category"), list) else []
    return {c.get("code") for cat in categories if isinstance(cat, dict)
            for c in (cat.get("coding") if isinstance(cat.get("coding"), list) else []) if isinstance(c, dict)}


def _has_value(observation: dict) -> bool:
    return any(k.startswith("value") and observation[k] is not None for k in observation)


def _analyte_of(concept) -> tuple[str, dict] | None:
    for analyte, spec in _analytes().items():
        if value_set(spec["value_set"]).match_code(concept) is not None:
            return analyte, spec
    return None


def _too_large(observation: dict) -> str | None:
    """Why an Observation is too large to read (a whole questionnaire pasted into one answer), or None."""
    components = observation.get("component") if isinstance(observation.get("component"), list) else []
    if len(components) > MAX_COMPONENTS:
        return f"{len(components)} components (more than {MAX_COMPONENTS})"
    texts = [observation.get("valueString"), _notes(observation)]
    texts += [c.get("valueString") for c in components if isinstance(c, dict)]
    size = sum(len(t) for t in texts if isinstance(t, str))
    return f"{size} characters of text (more than {MAX_TEXT_CHARS})" if size > MAX_TEXT_CHARS else None


def _too_old(observation: dict, today: date) -> bool:
    """Older than the window by effective[x] (what a server's date search reads; US Core requires it on
    labs, vital signs and survey answers). Without effective[x] a search with date=ge never returns it,
    so it is not read from prefetch either."""
    period = observation.get("effectivePeriod") if isinstance(observation.get("effectivePeriod"), dict) else {}
    if parse_date(period.get("start")) and not period.get("end"):
        return False  # still going on
    when = (parse_date(observation.get("effectiveDateTime"), end=True)
            or parse_date(observation.get("effectiveInstant"), end=True)
            or parse_date(period.get("end"), end=True))
    return when is None or when < today - timedelta(days=RECENT_OBSERVATION_DAYS)


def _interpretation_side(observation: dict) -> str | None:
    interpretations = observation.get("interpretation") if isinstance(observation.get("interpretation"), list) else []
    for concept in interpretations:
        code = _status_code(concept)
        if code in LOW_INTERPRETATION:
            return "low"
        if code in HIGH_INTERPRETATION:
            return "high"
    return None


def _component_observations(observation: dict) -> list[dict]:
    """Each component as an Observation of its own: the panel's id, status, dates and category, the
    component's code, value and interpretation (Hb and Hct inside a CBC, answers inside a survey)."""
    shared = {k: v for k, v in observation.items() if k not in _PANEL_PARTS and not k.startswith("value")}
    components = observation.get("component") if isinstance(observation.get("component"), list) else []
    return [{**shared, **{k: v for k, v in c.items() if k != "id"}} for c in components if isinstance(c, dict)]


def _read_observation(obs: dict, facts: Facts, readings: _Readings) -> list:
    status = obs.get("status")
    if status not in USABLE_OBSERVATION:
        return []
    recent_only = not _categories(obs) & set(UNWINDOWED_CATEGORIES)
    if recent_only and _too_old(obs, facts.today):
        return []  # describes the patient of years ago (and fetch mode does not ask for it)
    too_large = _too_large(obs)
    if too_large:
        facts.unavailable.append(f"{_ref(obs)}: {too_large}, not read")
        return []
    parts = _component_observations(obs)
    if _has_value(obs) or not (parts or obs.get("hasMember")):
        parts.insert(0, obs)  # a panel's own code names the panel (or the questionnaire), not a finding
    for part in parts:
        _read_result(part, facts, readings, recent_only)
    if not _has_value(obs) and not obs.get("component"):
        _check_panel(obs, facts, readings)
    return []


def _read_result(obs: dict, facts: Facts, readings: _Readings, recent_only: bool) -> None:
    """One result: the Observation itself, or one of its components."""
    status = obs.get("status")
    code = obs.get("code")
    analyte = _analyte_of(code)
    if (analyte is not None or recent_only) and _too_old(obs, facts.today):
        return  # describes the patient of years ago (and fetch mode does not ask for it)
    if analyte is not None:
        name, spec = analyte
        result = _lab_result(obs, name, spec)
        if result is not None:
            readings.by_analyte.setdefault(name, []).append(result)
        elif not _has_value(obs) and _interpretation_side(obs):
            side = _interpretation_side(obs)
            label = next((_status_code(i) for i in obs.get("interpretation") or [] if _status_code(i)), side)
            evidence = Evidence(_ref(obs), coding_label(code), _effective(obs),
                                f"no value; interpretation {label} ({side})", "code",
                                None if status in FINAL_OBSERVATION else status)
            readings.interpreted.append((name, side, evidence, _moment(obs)))
        return
    if value_set("smoking-status").match(code) is not None and status in FINAL_OBSERVATION:
        answer = obs.get("valueCodeableConcept")
        when = _effective(obs)
        current = value_set("smoking-current").match(answer) if isinstance(answer, dict) else None
        not_current = (value_set("smoking-former-or-never").match(answer)
                       if isinstance(answer, dict) else None)
        if current or not_current:
            finding = Finding("smoking-status", Evidence(_ref(obs), coding_label(answer), when), onset=when)
            readings.smoking.append((when, finding, bool(current) and not not_current))
        return
    if code is not None or _has_value(obs):
        facts.findings.extend(_exam_findings(obs))


def _check_panel(obs: dict, facts: Facts, readings: _Readings) -> None:
    """A panel is read through its members; say so when a member, or every result, is missing."""
    members = obs.get("hasMember") if isinstance(obs.get("hasMember"), list) else []
    if members:
        for member in members:
            ref = member.get("reference") if isinstance(member, dict) else None
            ident = ref.rsplit("Observation/", 1)[1] if isinstance(ref, str) and "Observation/" in ref else None
            if ident is None or ident not in readings.observation_ids:
                facts.unavailable.append(f"{_ref(obs)}: panel member {'Observation/' + ident if ident else '?'} "
                                         "is not in the record, not read")
        return
    if obs.get("dataAbsentReason") is None and _panel_name(obs.get("code")):
        facts.unavailable.append(f"{_ref(obs)}: {_panel_name(obs.get('code'))} without results, not read")


def _panel_name(concept) -> str | None:
    panels = _panels()
    codings = concept.get("coding") if isinstance(concept, dict) and isinstance(concept.get("coding"), list) else []
    for coding in codings:
        if (isinstance(coding, dict) and terminology.normalise_system(coding.get("system")) == terminology.LOINC
                and coding.get("code") in panels):
            return panels[coding["code"]]
    return None


@cache
def _panels() -> dict[str, str]:
    data = json.loads((Path(__file__).parent / "analytes.json").read_text(encoding="utf-8"))
    return data["panels"]


def _interpreted_findings(readings: _Readings, facts: Facts) -> None:
    """A result reported only as high or low (no value) counts as the matching diagnosis (anaemia,
    raised ESR...), when it is newer than every result of that analyte that has a value."""
    latest: dict[str, tuple[str, Evidence, tuple]] = {}
    for analyte, side, evidence, moment in readings.interpreted:
        valued = facts.series.get(analyte) or []
        if valued and valued[-1].moment >= moment:
            continue
        if analyte not in latest or latest[analyte][2] < moment:
            latest[analyte] = (side, evidence, moment)
    for analyte, (side, evidence, _) in latest.items():
        concept = (_analytes()[analyte].get("interpretation") or {}).get(side)
        if concept:
            facts.findings.append(Finding(concept, evidence, onset=evidence.date, last_activity=evidence.date))


def _observations(observations: list[dict], facts: Facts) -> None:
    readings = _Readings(observation_ids={o["id"] for o in observations if isinstance(o.get("id"), str)})
    for obs in observations:
        _safely(facts, obs, lambda o: _read_observation(o, facts, readings))
    for analyte, results in readings.by_analyte.items():
        # A preliminary result is superseded by a final (amended, corrected) one of the same or a later
        # time; a preliminary newer than every final one is kept, and labelled preliminary on the card.
        latest_final = max((r.moment[0] for r in results if not r.preliminary), default=None)
        usable = [r for r in results if not r.preliminary or latest_final is None or r.moment[0] > latest_final]
        usable.sort(key=lambda r: r.moment)
        facts.series[analyte] = usable
        facts.labs[analyte] = usable[-1]
    _interpreted_findings(readings, facts)
    smoking = readings.smoking
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


def _long_term(resource: dict, when: date | None, end: date | None, today: date) -> bool:
    """Long-term use: ordered as continuous, supplied, valid or taken for 28 days or more, or active since then."""
    course = _status_code(resource.get("courseOfTherapyType"))
    dispense = resource.get("dispenseRequest") if isinstance(resource.get("dispenseRequest"), dict) else {}
    supply = dispense.get("expectedSupplyDuration") if isinstance(dispense.get("expectedSupplyDuration"), dict) else {}
    supply_days = quantity_value(supply, "d") if supply else None
    period = dispense.get("validityPeriod") if isinstance(dispense.get("validityPeriod"), dict) else {}
    valid_days = _days(parse_date(period.get("start")), parse_date(period.get("end")))
    taken_days = _days(when, end)
    running_days = _days(when, today) if resource.get("status") in ("active", "on-hold", None) else None
    return (course == "continuous" or any(d is not None and d >= LONG_TERM_DAYS
                                          for d in (supply_days, valid_days, taken_days, running_days)))


def _medication_concepts(resource: dict, medications: dict[str, dict]) -> list[dict] | None:
    """The concepts naming the drug: medicationCodeableConcept, or the referenced Medication's code and
    ingredients (contained, included or fetched), or the reference's display. None: cannot be told."""
    concept = resource.get("medicationCodeableConcept")
    if isinstance(concept, dict):
        return [concept]
    ref = resource.get("medicationReference") if isinstance(resource.get("medicationReference"), dict) else {}
    target = ref.get("reference") if isinstance(ref.get("reference"), str) else ""
    medication = None
    if target.startswith("#"):
        contained = resource.get("contained") if isinstance(resource.get("contained"), list) else []
        medication = next((c for c in contained if isinstance(c, dict) and c.get("resourceType") == "Medication"
                           and c.get("id") == target[1:]), None)
    elif "Medication/" in target:
        medication = medications.get(target.rsplit("Medication/", 1)[1].split("/", 1)[0])
    if medication is not None:
        concepts = [medication["code"]] if isinstance(medication.get("code"), dict) else []
        ingredients = medication.get("ingredient") if isinstance(medication.get("ingredient"), list) else []
        concepts += [i["itemCodeableConcept"] for i in ingredients
                     if isinstance(i, dict) and isinstance(i.get("itemCodeableConcept"), dict)]
        if concepts:
            return concepts
    if isinstance(ref.get("display"), str) and ref["display"].strip():
        return [{"text": ref["display"]}]
    return None


def _medication_period(resource: dict) -> tuple[date | None, date | None]:
    """(start, end) of a request (authoredOn, validity), a statement or an administration (effective)."""
    if resource.get("resourceType") == "MedicationRequest":
        dispense = resource.get("dispenseRequest") if isinstance(resource.get("dispenseRequest"), dict) else {}
        period = dispense.get("validityPeriod") if isinstance(dispense.get("validityPeriod"), dict) else {}
        return parse_date(resource.get("authoredOn")), parse_date(period.get("end"))
    period = resource.get("effectivePeriod") if isinstance(resource.get("effectivePeriod"), dict) else {}
    start = (parse_date(resource.get("effectiveDateTime")) or parse_date(period.get("start"))
             or parse_date(resource.get("dateAsserted")))
    return start, parse_date(period.get("end")) or parse_date(resource.get("effectiveDateTime"))


MEDICATION_IGNORED = {"MedicationRequest": IGNORED_REQUEST, "MedicationStatement": IGNORED_STATEMENT,
                      "MedicationAdministration": IGNORED_ADMINISTRATION}
MEDICATION_ACTIVE = {"MedicationRequest": {"active", "on-hold", None},
                     "MedicationStatement": {"active", "on-hold", None},
                     "MedicationAdministration": {"in-progress", "on-hold"}}


def _medication_findings(resource: dict, today: date, medications: dict[str, dict] | None = None,
                         unavailable: list[str] | None = None) -> list[Finding]:
    """A MedicationRequest, MedicationStatement or MedicationAdministration → findings."""
    rtype = resource.get("resourceType", "MedicationRequest")
    if resource.get("status") in MEDICATION_IGNORED.get(rtype, IGNORED_REQUEST):
        return []
    concepts = _medication_concepts(resource, medications or {})
    if concepts is None:
        if unavailable is not None and isinstance(resource.get("medicationReference"), dict):
            unavailable.append(f"{_ref(resource)}: its Medication could not be resolved, not read")
        return []
    when, end = _medication_period(resource)
    active = resource.get("status") in MEDICATION_ACTIVE.get(rtype, {"active"})
    out = []
    for name in value_sets_read_from("medication"):
        found, concept = next(((f, c) for c in concepts if (f := value_set(name).match(c)) is not None),
                              (None, None))
        if found is None:
            continue
        if name == "cancer-treatment" and not _for_cancer(resource):
            continue
        if name == "immunosuppression" and value_set("systemic-corticosteroid").match(concept) and (
                rtype == "MedicationAdministration" or not _long_term(resource, when, end, today)):
            continue  # a short steroid course (or a single dose) is not immunosuppression
        out.append(Finding(name, Evidence(_ref(resource), _label(concept, found), when, None, found.how,
                                          _text_or_none(resource.get("status"))),
                           active=active, onset=when,
                           last_activity=max([d for d in (when, end) if d], default=None),
                           text=_texts(resource, concept)))
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
    birth = parse_date(patient.get("birthDate"))
    for condition in record.of_type("Condition"):
        for finding in _safely(facts, condition, lambda c: _condition_findings(c, birth)):
            if finding.concept == "low-back-pain":
                if finding.active:
                    facts.lbp.append(finding)
                    lbp_condition_ids.add(str(condition.get("id")))
            else:
                facts.findings.append(finding)
    _observations(record.of_type("Observation"), facts)
    medications = {m["id"]: m for m in record.of_type("Medication") if isinstance(m.get("id"), str)}
    for rtype in ("MedicationRequest", "MedicationStatement", "MedicationAdministration"):
        for resource in record.of_type(rtype):
            facts.findings.extend(_safely(facts, resource, lambda r: _medication_findings(
                r, today, medications, facts.unavailable)))
    for procedure in record.of_type("Procedure"):
        facts.findings.extend(_safely(facts, procedure, _procedure_findings))
    for encounter in record.of_type("Encounter"):
        found = _safely(facts, encounter, lambda e: [_encounter_lbp(e, lbp_condition_ids)])
        finding = found[0] if found else None
        if finding is None:
            continue
        if record.encounter_id and encounter.get("id") == record.encounter_id:
            facts.lbp.append(finding)
        elif finding.onset is None or finding.onset < today:
            facts.lbp_encounters.append(finding)  # a visit today is this visit, never an earlier one
    onsets = [f.onset for f in facts.lbp if f.onset]
    facts.lbp_onset = min(onsets) if onsets else None
    _notes_findings(record, facts)
    return facts


# ---------------------------------------------------------------- clinical notes and reports

NOTE_WINDOW_DAYS = 90  # notes of the current LBP episode or this many days give every flag
NOTE_CANCER_CONCEPTS = (*CANCER_CONCEPTS, "cancer-treatment")  # read from notes of any date


def _notes_findings(record: PatientRecord, facts: Facts) -> None:
    """Findings written in clinical notes and imaging/pathology reports (issue 12), each dated by its note.

    Notes of the current episode or the last 90 days give every flag; older or undated ones (still
    within the caps) only cancer history. What could not be read is named on any card shown, but,
    unlike missing coded data, never makes a card of its own: most records hold a scan or more notes
    than the cap, and a card for that on every back-pain visit would be noise.
    """
    read = read_notes(record)
    facts.notes_unread.extend(read.unread)
    since = facts.today - timedelta(days=NOTE_WINDOW_DAYS)
    if facts.lbp_onset is not None and facts.lbp_onset < since:
        since = facts.lbp_onset
    sets = {"note": value_sets_read_from("DocumentReference"), "report": value_sets_read_from("DiagnosticReport")}
    for note in read.notes:
        recent = note.date is not None and since <= note.date <= facts.today
        names = [n for n in sets[note.kind] if recent or n in NOTE_CANCER_CONCEPTS]
        facts.findings.extend(_note_findings(note, names))


def _note_findings(note: Note, names) -> list[Finding]:
    out = []
    for name in names:
        mention = value_set(name).mention_in(note.text, note=True)
        if mention is None:
            continue
        if name in CANCER_CONCEPTS and value_set("non-melanoma-skin-cancer").mention_in(mention.sentence, note=False):
            continue  # "h/o basal cell carcinoma": not a cancer that spreads to the spine
        status = "suspected" if mention.uncertain else ("preliminary" if note.preliminary else None)
        history = mention.historical or name == "cancer-personal-history"
        out.append(Finding(
            concept=name,
            evidence=Evidence(note.reference, note.title, note.date, None, "note", status, quote(mention)),
            active=not history, suspected=mention.uncertain, onset=note.date, last_activity=note.date,
            recorded=note.date, text=mention.sentence))
    return out


def _safely(facts: Facts, resource: dict, read) -> list:
    """A malformed resource is skipped and named on the card, never a crash of the whole request."""
    try:
        return read(resource)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError):
        facts.unavailable.append(f"{_ref(resource)}: malformed, not read")
        return []
