"""Lumbar-spine imaging among the draft orders of an order hook, recognised by code or text.

Pure functions over plain FHIR JSON (dicts). ``orderables.json`` (beside this module) lists what the
service recognises and suggests, with codes and text rules. Recognition is forgiving: a malformed
draft order is skipped, never raised on.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger("lbp_redflags.orders")

ORDERABLES = Path(__file__).resolve().parent / "orderables.json"
MODALITIES = ("radiograph", "ct", "mri-without", "mri-without-with", "mri-with")
RADLEX = "http://www.radlex.org"  # RadLex playbook ids appear only on imaging orders


@cache
def _orderables() -> dict[str, Any]:
    return json.loads(ORDERABLES.read_text(encoding="utf-8"))


def _orderables_by_id() -> dict[str, dict[str, Any]]:
    return _orderable_index()[0]


@lru_cache(maxsize=1)
def _orderable_index() -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], str]]:
    data = _orderables()
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
    return dict(_orderables()["categories"][kind])


def _normalise_system(system: Any) -> str:
    if not isinstance(system, str):
        return ""
    system = system.strip()
    aliases = _orderables()["systemAliases"]
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
    rules = _orderables()["textRecognition"]
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
