"""Lumbar-spine imaging among draft orders, and its PAMA appropriateness rating.

Pure functions over plain FHIR JSON (dicts). The knowledge lives in two data files:
``knowledge/orderables.json`` (what the service recognises and suggests, with codes and text rules) and
``knowledge/appropriateness.json`` (tier x modality -> ACR category, PAMA rating, ACR variant).

Recognition is forgiving: a malformed draft order is skipped, never raised on. Rating and the
``update`` action follow the Argonaut "CDS Hooks for PAMA" extensions.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger("lbp_redflags.orders")

KNOWLEDGE_DIR = Path(__file__).resolve().parent / "knowledge"

MODALITIES = ("radiograph", "ct", "mri-without", "mri-without-with", "mri-with")
TIERS = ("emergency", "imaging", "consider", "none")

CPT = "http://www.ama-assn.org/go/cpt"
LOINC = "http://loinc.org"
RADLEX = "http://www.radlex.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"


# --------------------------------------------------------------------------------------------------
# Knowledge files


@cache
def _knowledge(name: str) -> dict[str, Any]:
    with (KNOWLEDGE_DIR / f"{name}.json").open(encoding="utf-8") as handle:
        return json.load(handle)


def _orderables_by_id() -> dict[str, dict[str, Any]]:
    return _orderable_index()[0]


@lru_cache(maxsize=1)
def _orderable_index() -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], str]]:
    data = _knowledge("orderables")
    by_id: dict[str, dict[str, Any]] = {}
    by_code: dict[tuple[str, str], str] = {}
    for entry in data["orderables"]:
        by_id[entry["id"]] = entry
        if entry.get("kind") != "imaging":
            continue  # labs and referrals are suggested, never rated as imaging
        for coding in entry.get("codes", ()):
            key = (_normalise_system(coding["system"]), _normalise_code(coding["system"], coding["code"]))
            if key in by_code and by_code[key] != entry["id"]:
                raise ValueError(f"code {key} belongs to both {by_code[key]} and {entry['id']}")
            by_code[key] = entry["id"]
    return by_id, by_code


def orderable(orderable_id: str) -> dict[str, Any]:
    """A copy of one entry of ``knowledge/orderables.json``; ``KeyError`` when unknown."""
    return copy.deepcopy(_orderables_by_id()[orderable_id])


def orderable_ids(kind: str | None = None) -> tuple[str, ...]:
    """Ids of the orderables, optionally of one kind (``imaging``, ``lab``, ``referral``)."""
    return tuple(i for i, e in _orderables_by_id().items() if kind is None or e.get("kind") == kind)


def category_coding(kind: str) -> dict[str, str]:
    """The ServiceRequest.category Coding for an orderable kind."""
    return dict(_knowledge("orderables")["categories"][kind])


def _normalise_system(system: Any) -> str:
    if not isinstance(system, str):
        return ""
    system = system.strip()
    aliases = _knowledge("orderables")["systemAliases"]
    return aliases.get(system, aliases.get(system.rstrip("/"), system.rstrip("/")))


def _normalise_code(system: str, code: Any) -> str:
    if not isinstance(code, str):
        return ""
    code = code.strip()
    if _normalise_system(system) == RADLEX:
        code = code.upper()
        if code.isdigit():
            code = "RPID" + code
    return code


# --------------------------------------------------------------------------------------------------
# Draft orders


@dataclass(frozen=True)
class ImagingOrder:
    """A draft ServiceRequest recognised as lumbar-spine imaging."""

    reference: str  # "ServiceRequest/<id>" ("" when the draft has no id)
    resource: dict = field(hash=False)  # the draft ServiceRequest as received (a copy)
    modality: str  # one of MODALITIES
    orderable: str | None  # id in knowledge/orderables.json when recognised by code
    lbp_reason: bool  # reasonCode says low back pain
    region: str = "lumbar"  # "lumbar" | "whole-spine"
    contrast: str = "none"  # "none" (radiograph) | "without" | "with" | "without-with" | "unspecified"
    matched_by: str = "code"  # "code" | "text"
    matched: str = ""  # "http://www.ama-assn.org/go/cpt|72148", or the text that matched

    @property
    def resource_id(self) -> str | None:
        rid = self.resource.get("id")
        return rid if isinstance(rid, str) and rid else None


def lumbar_imaging_orders(draft_orders: dict | list | None) -> list[ImagingOrder]:
    """The lumbar-spine imaging ServiceRequests among ``context.draftOrders`` (a FHIR Bundle).

    Recognises by code first (CPT, LOINC, RadLex), then by text (code.text and coding displays).
    Other resource types, other body regions, empty drafts and malformed entries are skipped.
    """
    found: list[ImagingOrder] = []
    for resource in _service_requests(draft_orders):
        try:
            order = _recognise(resource)
        except Exception:  # a malformed draft must never break the hook
            log.warning("skipped a draft ServiceRequest that could not be read", exc_info=True)
            continue
        if order is not None:
            found.append(order)
    return found


def _service_requests(draft_orders: Any) -> Iterator[dict]:
    if isinstance(draft_orders, dict):
        if draft_orders.get("resourceType") == "ServiceRequest":
            items: Iterable[Any] = [draft_orders]
        else:
            entries = draft_orders.get("entry")
            items = entries if isinstance(entries, list) else []
    elif isinstance(draft_orders, list):
        items = draft_orders
    else:
        items = []
    for item in items:
        if not isinstance(item, dict):
            continue
        resource = item.get("resource") if "resource" in item else item
        if isinstance(resource, dict) and resource.get("resourceType") == "ServiceRequest":
            yield resource


def _recognise(resource: dict) -> ImagingOrder | None:
    concept = resource.get("code")
    if not isinstance(concept, dict):
        return None
    codings = (
        [c for c in concept.get("coding") or [] if isinstance(c, dict)]
        if isinstance(concept.get("coding"), list)
        else []
    )

    found = _match_codings(codings)
    if found is not None:
        entry, matched = found
        modality, region, contrast = entry["modality"], entry["region"], entry["contrast"]
        orderable_id: str | None = entry["id"]
        matched_by = "code"
    else:
        texts = [concept.get("text")] + [c.get("display") for c in codings]
        hit = None
        for text in texts:
            if isinstance(text, str) and text.strip():
                hit = classify_text(text)
                if hit is not None:
                    matched = text.strip()
                    break
        if hit is None:
            return None
        modality, region, contrast = hit
        orderable_id = None
        matched_by = "text"

    rid = resource.get("id")
    reference = f"ServiceRequest/{rid}" if isinstance(rid, str) and rid else ""
    return ImagingOrder(
        reference=reference,
        resource=copy.deepcopy(resource),
        modality=modality,
        orderable=orderable_id,
        lbp_reason=_has_lbp_reason(resource.get("reasonCode")),
        region=region,
        contrast=contrast,
        matched_by=matched_by,
        matched=matched,
    )


def _match_codings(codings: list[dict]) -> tuple[dict[str, Any], str] | None:
    by_id, by_code = _orderable_index()
    for coding in codings:
        system = _normalise_system(coding.get("system"))
        code = _normalise_code(system, coding.get("code"))
        if not system or not code:
            continue
        orderable_id = by_code.get((system, code))
        if orderable_id is not None:
            return by_id[orderable_id], f"{system}|{code}"
    return None


# --------------------------------------------------------------------------------------------------
# Text recognition (rules in knowledge/orderables.json, "textRecognition")


@dataclass(frozen=True)
class _TextRules:
    exclude: re.Pattern[str]
    whole_spine: re.Pattern[str]
    lumbar: re.Pattern[str]
    lumbar_weak: re.Pattern[str]
    other_region: re.Pattern[str]
    modalities: tuple[tuple[str, re.Pattern[str]], ...]
    normalise: tuple[tuple[re.Pattern[str], str], ...]
    non_contrast: re.Pattern[str]
    without_with: re.Pattern[str]
    without: re.Pattern[str]
    with_: re.Pattern[str]


@lru_cache(maxsize=1)
def _text_rules() -> _TextRules:
    rules = _knowledge("orderables")["textRecognition"]
    region, contrast = rules["region"], rules["contrast"]
    return _TextRules(
        exclude=re.compile(rules["exclude"]),
        whole_spine=re.compile(region["wholeSpine"]),
        lumbar=re.compile(region["lumbar"]),
        lumbar_weak=re.compile(region["lumbarWeak"]),
        other_region=re.compile(region["otherRegion"]),
        modalities=tuple((name, re.compile(p)) for name, p in rules["modality"].items()),
        normalise=tuple((re.compile(p), repl) for p, repl in rules["normalise"]),
        non_contrast=re.compile(rules["nonContrastPhrases"]),
        without_with=re.compile(contrast["withoutWith"]),
        without=re.compile(contrast["without"]),
        with_=re.compile(contrast["with"]),
    )


def classify_text(text: str | None) -> tuple[str, str, str] | None:
    """(modality, region, contrast) for the free text of an imaging order, or None when it is not
    recognisably lumbar-spine (or whole-spine) radiography, CT or MRI."""
    if not isinstance(text, str):
        return None
    rules = _text_rules()
    lowered = " ".join(text.lower().split())
    if not lowered or rules.exclude.search(lowered):
        return None

    if rules.whole_spine.search(lowered):
        region = "whole-spine"
    elif rules.lumbar.search(lowered):
        region = "lumbar"
    elif rules.lumbar_weak.search(lowered) and not rules.other_region.search(lowered):
        region = "lumbar"
    else:
        return None

    first: tuple[int, str] | None = None
    for name, pattern in rules.modalities:
        m = pattern.search(lowered)
        if m is not None and (first is None or m.start() < first[0]):
            first = (m.start(), name)
    if first is None:
        return None
    kind = first[1]
    if kind == "radiograph":
        return "radiograph", region, "none"

    contrast = _text_contrast(lowered, rules)
    if kind == "ct":
        return "ct", region, contrast
    modality = {
        "without": "mri-without",
        "with": "mri-with",
        "without-with": "mri-without-with",
        "unspecified": "mri-without",  # see appropriateness.json notes
    }[contrast]
    return modality, region, contrast


def _text_contrast(lowered: str, rules: _TextRules) -> str:
    text = f" {lowered} "
    for pattern, replacement in rules.normalise:
        text = pattern.sub(replacement, text)
    text = rules.non_contrast.sub(" ", text)
    text = " ".join(text.split())
    if rules.without_with.search(text):
        return "without-with"
    if rules.without.search(text):
        return "without"
    if rules.with_.search(text):
        return "with"
    return "unspecified"


# --------------------------------------------------------------------------------------------------
# Low back pain as the reason for the order

_LBP_SNOMED = frozenset({"279039007", "161891005", "23056005"})
_LBP_ICD10_PREFIXES = ("M54.5", "M54.4", "M54.3")
_LBP_ICD10_CODES = frozenset({"M54.16", "M54.17"})
_LBP_TEXT = re.compile(r"\blow(er)?[\s-]+back[\s-]+pain\b|\blumbago\b|\bsciatica\b|\blbp\b")
_NEGATION = re.compile(r"\b(no|not|denies|denied|without|negative for|free of)\b[^.;,]{0,30}$")


@lru_cache(maxsize=1)
def _lbp_value_set() -> Any:
    """The project's ``low-back-pain`` value set when fhir_mappings.terminology provides it."""
    try:
        from fhir_mappings import terminology  # optional: written separately
    except ImportError:
        return None
    try:
        return terminology.value_set("low-back-pain")
    except Exception:
        log.warning("low-back-pain value set unavailable; using the local check", exc_info=True)
        return None


def lbp_reason_source() -> str:
    """Which check decides ``lbp_reason``: ``"value-set"`` or ``"local"``."""
    return "value-set" if _lbp_value_set() is not None else "local"


def _has_lbp_reason(reason_codes: Any) -> bool:
    if not isinstance(reason_codes, list):
        return False
    return any(is_low_back_pain(c) for c in reason_codes if isinstance(c, dict))


def is_low_back_pain(concept: dict | None) -> bool:
    """Whether a CodeableConcept (e.g. a ServiceRequest.reasonCode) means low back pain."""
    if not isinstance(concept, dict):
        return False
    value_set = _lbp_value_set()
    if value_set is not None:
        try:
            return value_set.match(concept) is not None
        except Exception:
            log.warning("low-back-pain value set failed; using the local check", exc_info=True)
    return _local_lbp_match(concept)


def _local_lbp_match(concept: dict) -> bool:
    codings = concept.get("coding") if isinstance(concept.get("coding"), list) else []
    for coding in codings:
        if not isinstance(coding, dict):
            continue
        system, code = coding.get("system"), coding.get("code")
        if not isinstance(system, str) or not isinstance(code, str):
            continue
        system, code = system.strip().rstrip("/"), code.strip()
        if system == SNOMED and code in _LBP_SNOMED:
            return True
        if system in (ICD10CM, ICD10):
            icd = _icd_with_dot(code)
            if icd in _LBP_ICD10_CODES or icd.startswith(_LBP_ICD10_PREFIXES):
                return True
    texts = [concept.get("text")] + [c.get("display") for c in codings if isinstance(c, dict)]
    return any(_lbp_text(t) for t in texts if isinstance(t, str))


def _icd_with_dot(code: str) -> str:
    code = code.upper().replace(" ", "")
    if "." not in code and len(code) > 3:
        code = f"{code[:3]}.{code[3:]}"
    return code


def _lbp_text(text: str) -> bool:
    lowered = " ".join(text.lower().split())
    for m in _LBP_TEXT.finditer(lowered):
        if not _NEGATION.search(lowered[: m.start()]):
            return True
    return False


# --------------------------------------------------------------------------------------------------
# Rating


@dataclass(frozen=True)
class Rating:
    pama_code: str  # "appropriate" | "not-appropriate" | "no-criteria-apply"
    acr_category: str | None  # "usually-appropriate" | "may-be-appropriate" | "usually-not-appropriate"
    acr_variant: str  # ACR AC Low Back Pain variant: "1".."7", or "1 or 2" when the duration is unknown
    modality: str
    tier: str
    explanation: str
    source: str


def duration_bucket(lbp_weeks: float | None) -> str:
    """``lt6w``, ``ge6w`` or ``unknown`` (None, negative or not a number)."""
    if lbp_weeks is None or isinstance(lbp_weeks, bool):
        return "unknown"
    try:
        weeks = float(lbp_weeks)
    except (TypeError, ValueError):
        return "unknown"
    if math.isnan(weeks) or weeks < 0:
        return "unknown"
    return "ge6w" if weeks >= _knowledge("appropriateness")["durationThresholdWeeks"] else "lt6w"


def _row(tier: str, lbp_weeks: float | None) -> dict[str, Any]:
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; expected one of {TIERS}")
    bucket = duration_bucket(lbp_weeks)
    rows = [r for r in _knowledge("appropriateness")["rows"] if r["tier"] == tier]
    for wanted in (bucket, "any"):
        for row in rows:
            if row["duration"] == wanted:
                return row
    raise LookupError(f"appropriateness.json has no row for tier {tier!r}, duration {bucket!r}")


def _modality_of(order: ImagingOrder | str) -> str:
    modality = order.modality if isinstance(order, ImagingOrder) else order
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    return modality


def rate(order: ImagingOrder | str, tier: str, lbp_weeks: float | None) -> Rating:
    """The PAMA rating of a lumbar imaging order (or a bare modality) for an assessment tier."""
    modality = _modality_of(order)
    row = _row(tier, lbp_weeks)
    cell = row["ratings"][modality]
    table = _knowledge("appropriateness")
    study = table["modalities"][modality]
    acr = cell.get("acr")

    lead = (
        f"ACR Appropriateness Criteria Low Back Pain (2021), variant {row['acrVariant']} "
        f"({row['variantTitle']})"
    )
    if acr is None:
        judgement = f"{lead} does not rate {study}"
    else:
        judgement = f"{lead}: {study} rated '{table['acrCategories'][acr]['display'].lower()}'"
    if cell.get("note"):
        judgement += f" ({cell['note']})"
    parts = [judgement + "."]
    if isinstance(order, ImagingOrder):
        if order.region == "whole-spine":
            parts.append("Whole-spine MRI is rated with the lumbar MRI of the same contrast.")
        if order.contrast == "unspecified" and modality.startswith("mri"):
            parts.append("The order does not state the contrast; rated as MRI without IV contrast.")
    parts.append(f"PAMA rating: {table['pamaRatings'][cell['pama']]}.")
    return Rating(
        pama_code=cell["pama"],
        acr_category=acr,
        acr_variant=row["acrVariant"],
        modality=modality,
        tier=tier,
        explanation=" ".join(parts),
        source=row["source"],
    )


def is_modality_recommended(order: ImagingOrder | str, tier: str, lbp_weeks: float | None = None) -> bool:
    """True when ACR rates the study *usually appropriate* for this tier (and duration)."""
    cell = _row(tier, lbp_weeks)["ratings"][_modality_of(order)]
    return cell.get("acr") == "usually-appropriate"


def preferred_orderable(
    tier: str, has_cancer_history: bool = False, lbp_weeks: float | None = None
) -> str | None:
    """The imaging the service suggests for a tier, or None when it suggests no imaging.

    emergency: whole-spine MRI without and with contrast with a known cancer (NICE QS56), else MRI
    lumbar spine without and with contrast; imaging: MRI lumbar spine without and with contrast;
    consider after 6 weeks or more: MRI lumbar spine without contrast; otherwise None.
    The reasons are in appropriateness.json, "preferred".
    """
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; expected one of {TIERS}")
    choice = _knowledge("appropriateness")["preferred"]["imaging"].get(tier)
    if not choice:
        return None
    if "default" in choice:
        return choice["cancerHistory"] if has_cancer_history else choice["default"]
    return choice.get(duration_bucket(lbp_weeks))


def urgent_referral_orderable(has_cancer_history: bool) -> str:
    """The same-day referral for the emergency tier: MSCC / oncology with a known cancer, else ED."""
    choice = _knowledge("appropriateness")["preferred"]["urgentReferral"]
    return choice["cancerHistory"] if has_cancer_history else choice["default"]


def modality_display(modality: str) -> str:
    """Short human name of a modality, e.g. "MRI lumbar spine without IV contrast"."""
    return _knowledge("appropriateness")["modalities"][_modality_of(modality)]


# --------------------------------------------------------------------------------------------------
# The CDS Hooks `update` action carrying the rating (Argonaut CDS Hooks for PAMA extensions)


def _consult_uri(consult_id: str | uuid.UUID) -> str:
    raw = str(consult_id).strip()
    if raw.lower().startswith("urn:uuid:"):
        raw = raw[len("urn:uuid:") :]
    try:
        return f"urn:uuid:{uuid.UUID(raw)}"
    except ValueError:
        raise ValueError(f"consult_id must be a UUID, got {consult_id!r}") from None


def rating_extensions(rating: Rating, consult_id: str | uuid.UUID) -> list[dict[str, Any]]:
    """The three Argonaut PAMA extensions for a rating (rating, QCDSM consulted, consult id)."""
    table = _knowledge("appropriateness")
    urls, systems = table["extensionUrls"], table["codeSystems"]
    codings: list[dict[str, str]] = [{"system": systems["pamaRating"], "code": rating.pama_code}]
    if rating.acr_category is not None:
        codings.append(
            {
                "system": systems["acrCategory"],
                "code": rating.acr_category,
                "display": table["acrCategories"][rating.acr_category]["display"],
            }
        )
    acr = table["acrCategories"][rating.acr_category]["display"].lower() if rating.acr_category else "not rated"
    text = (f"{rating.pama_code}: ACR Appropriateness Criteria Low Back Pain (2021) variant {rating.acr_variant}, "
            f"{acr}")
    return [
        {"url": urls["rating"], "valueCodeableConcept": {"coding": codings, "text": text}},
        {"url": urls["qcdsmConsulted"], "valueString": table["qcdsmConsulted"]},
        {"url": urls["consultId"], "valueUri": _consult_uri(consult_id)},
    ]


def with_rating(resource: dict, rating: Rating, consult_id: str | uuid.UUID) -> dict:
    """A copy of a ServiceRequest with the PAMA extensions set; earlier ones with the same URLs
    are replaced, any other extension is kept. The input is not changed."""
    urls = set(_knowledge("appropriateness")["extensionUrls"].values())
    original = copy.deepcopy(resource)
    existing = original.get("extension")
    kept = [
        e
        for e in (existing if isinstance(existing, list) else [])
        if not (isinstance(e, dict) and e.get("url") in urls)
    ]
    updated: dict[str, Any] = {}
    for key in ("resourceType", "id", "meta"):
        if key in original:
            updated[key] = original[key]
    updated["extension"] = kept + rating_extensions(rating, consult_id)
    for key, value in original.items():
        if key not in updated:
            updated[key] = value
    return updated


def rating_action(order: ImagingOrder, rating: Rating, consult_id: str | uuid.UUID) -> dict[str, Any]:
    """CDS Hooks 2.0 ``update`` action recording the PAMA rating on the draft order."""
    table = _knowledge("appropriateness")
    acr = (
        f"; ACR {table['acrCategories'][rating.acr_category]['display'].lower()}"
        if rating.acr_category is not None
        else ""
    )
    return {
        "type": "update",
        "description": (
            f"Record the PAMA appropriateness rating on the draft order: "
            f"{table['pamaRatings'][rating.pama_code]}{acr} (ACR variant {rating.acr_variant})."
        ),
        "resource": with_rating(order.resource, rating, consult_id),
    }
