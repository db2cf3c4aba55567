"""The PAMA appropriateness rating of a lumbar imaging order, and the Argonaut ``update`` carrying it.

``knowledge/appropriateness.json`` holds the tier x modality table (ACR category, PAMA rating, ACR
variant) with its sources; the extensions follow the Argonaut "CDS Hooks for PAMA" guide.
"""

from __future__ import annotations

import copy
import math
import uuid
from dataclasses import dataclass
from typing import Any

from fhir_mappings.orders import MODALITIES, ImagingOrder

from .data import knowledge_file
from .tiers import TIER_IDS


def appropriateness() -> dict[str, Any]:
    return knowledge_file("appropriateness")


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
    return "ge6w" if weeks >= appropriateness()["durationThresholdWeeks"] else "lt6w"


def _row(tier: str, lbp_weeks: float | None) -> dict[str, Any]:
    if tier not in TIER_IDS:
        raise ValueError(f"unknown tier {tier!r}; expected one of {TIER_IDS}")
    bucket = duration_bucket(lbp_weeks)
    rows = [r for r in appropriateness()["rows"] if r["tier"] == tier]
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
    table = appropriateness()
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


def modality_display(modality: str) -> str:
    """Short human name of a modality, e.g. "MRI lumbar spine without IV contrast"."""
    return appropriateness()["modalities"][_modality_of(modality)]


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
    table = appropriateness()
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
    urls = set(appropriateness()["extensionUrls"].values())
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
    table = appropriateness()
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
