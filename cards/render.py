"""Assessment (+ order ratings) → CDS Hooks 2.0 cards and systemActions.

Card uuids are derived from the hookInstance, so a retried call (EHRs retry on timeouts) gets
the same cards with the same uuids on any worker, without shared state.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .assess import Assessment, RedFlag, rules_version
from .orders import ImagingOrder, Rating, rating_action
from .suggestions import (
    REASON_TYPES,
    delete_order_action,
    escalate_order_action,
    replace_order_actions,
    service_request,
)

FHIR_REFERENCE = re.compile(r"^[A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")
UUID_NAMESPACE = uuid.UUID("6f1d3c1e-2b7a-4e55-9a0c-5d2f0b7c9e41")
INDICATORS = {"emergency": "critical", "imaging": "warning", "consider": "info", "none": "info"}


@cache
def recommendations() -> dict:
    return json.loads((Path(__file__).parent / "knowledge" / "recommendations.json").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class CardContext:
    hook: str
    service_id: str
    hook_instance: str
    patient_id: str | None
    encounter_id: str | None
    source_url: str | None = None


def stable_uuid(ctx: CardContext, *parts: str) -> str:
    """Same call retried → same uuid; the patient is part of the key, so a hookInstance reused for
    another patient never gives that patient's cards the first one's uuids."""
    key = (ctx.service_id, ctx.hook_instance, ctx.patient_id or "") + parts
    return str(uuid.uuid5(UUID_NAMESPACE, "|".join(key)))


# ---------------------------------------------------------------- text

def _evidence_line(flag: RedFlag) -> str:
    items = []
    for ev in flag.evidence:
        bits = [ev.label]
        if ev.value:
            bits.append(ev.value)
        if ev.date:
            bits.append(ev.date.isoformat())
        if ev.status:
            bits.append(ev.status)
        items.append(f"{', '.join(str(b) for b in bits)} [{ev.reference}]")
    note = f" ({flag.note})" if flag.note else ""
    return f"- **{flag.label}**{note}: " + "; ".join(items) + f"  \n  _Source: {flag.source}_"


def detail_markdown(assessment: Assessment, next_step: str, ratings: list[tuple[ImagingOrder, Rating]]) -> str:
    lines: list[str] = []
    if assessment.red_flags:
        lines.append("**Red flags found in the record**")
        lines.extend(_evidence_line(flag) for flag in assessment.red_flags)
    else:
        lines.append("**No red flag was found in the record.**")
    lines.append("")
    lines.append("**Why:** " + "; ".join(assessment.reasons) + f". _Source: {assessment.source}._")
    lines.append("")
    lines.append(f"**Recommended next step:** {next_step}")
    if assessment.older_labs and assessment.tier in ("consider", "imaging"):
        lines.append("Older results to repeat: " + "; ".join(
            f"{ev.label} {ev.value}, {ev.date.isoformat() if ev.date else 'undated'}" for ev in assessment.older_labs))
    for order, rating in ratings:
        lines.append("")
        lines.append(f"**Order rating** ({order.reference}): {rating.pama_code} — {rating.explanation} "
                     f"_({rating.source})_")
    if assessment.lbp_evidence:
        ev = assessment.lbp_evidence[0]
        since = f" since {ev.date.isoformat()}" if ev.date else ""
        weeks = f" ({_duration(assessment.lbp_days)})" if assessment.lbp_days is not None else ""
        lines.append("")
        lines.append(f"**Low back pain:** {ev.label}{since}{weeks} [{ev.reference}]")
    if assessment.tier == "emergency" and not assessment.known_cancer:
        pass  # the emergency is compression, not malignancy: a cancer estimate would distract
    elif assessment.probability is not None:
        lines.append("")
        lines.append(f"**Estimated probability of malignancy:** about {assessment.probability * 100:.1f} % "
                     f"({assessment.probability_note}).")
    elif assessment.probability_note and assessment.tier != "emergency":
        lines.append("")
        lines.append(f"**Estimated probability of malignancy:** {assessment.probability_note}.")
    if assessment.unavailable:
        lines.append("")
        lines.append("**Not checked — data unavailable:** a missing flag below may be a missing record, "
                     "not an absent finding.")
        lines.extend(f"- {item}" for item in assessment.unavailable)
    lines.append("")
    lines.append(f"_Rules version {rules_version()}._")
    return "\n".join(lines)


def _duration(days: int) -> str:
    if days < 14:
        return f"{days} day{'s' if days != 1 else ''}"
    return f"{days // 7} weeks"


# ---------------------------------------------------------------- suggestions

def _reasons(assessment: Assessment) -> list[str]:
    refs: list[str] = []
    for flag in assessment.red_flags:
        for ev in flag.evidence:
            for ref in ev.reference.split(", "):
                if FHIR_REFERENCE.match(ref) and ref.split("/")[0] in REASON_TYPES and ref not in refs:
                    refs.append(ref)
    return refs[:10]


def _create(ctx: CardContext, orderable: str, assessment: Assessment, priority: str, description: str) -> dict:
    return {
        "type": "create",
        "description": description,
        "resource": service_request(orderable, patient_id=ctx.patient_id, encounter_id=ctx.encounter_id,
                                    reasons=_reasons(assessment), priority=priority),
    }


def _lab_orderables(assessment: Assessment, sex: str | None, age: int | None) -> list[str]:
    labs = list(recommendations()["labs"]["orderables"])
    if sex == "male" and age is not None and age >= 50:
        labs.append(recommendations()["labs"]["psa_orderable"])
    return labs


def _suggestion(ctx: CardContext, key: str, label: str, actions: list[dict], recommended: bool) -> dict:
    return {"label": label, "uuid": stable_uuid(ctx, "suggestion", key), "isRecommended": recommended,
            "actions": actions}


def _labs_suggestion(ctx, assessment, sex, age, recommended=False) -> dict:
    actions = [_create(ctx, lab, assessment, "routine", f"Order {lab.removeprefix('lab-').upper()}")
               for lab in _lab_orderables(assessment, sex, age)]
    return _suggestion(ctx, "labs", "Order labs: ESR, CRP, CBC, calcium, alkaline phosphatase"
                       + (", PSA" if len(actions) > len(recommendations()["labs"]["orderables"]) else ""),
                       actions, recommended)


def chart_suggestions(ctx: CardContext, assessment: Assessment, sex, age) -> list[dict]:
    tier = assessment.tier
    spec = recommendations()["tiers"][tier]
    out = []
    if tier == "emergency":
        cancer = assessment.known_cancer
        referral = spec["referral_cancer" if cancer else "referral"]
        study = spec["study_cancer" if cancer else "study"]
        out.append(_suggestion(ctx, "referral", "Refer for same-day emergency evaluation",
                               [_create(ctx, referral, assessment, "stat", "Same-day emergency referral")], True))
        out.append(_suggestion(ctx, "study", "Order emergency MRI" + (" of the whole spine" if cancer else ""),
                               [_create(ctx, study, assessment, "stat", "Emergency MRI")], True))
    elif tier == "imaging":
        out.append(_suggestion(ctx, "study", "Order MRI lumbar spine without and with IV contrast",
                               [_create(ctx, spec["study"], assessment, spec["priority"],
                                        "MRI lumbar spine without and with IV contrast")], True))
        out.append(_labs_suggestion(ctx, assessment, sex, age, recommended=True))
    elif tier == "consider":
        out.append(_labs_suggestion(ctx, assessment, sex, age, recommended=True))
    return out


def order_suggestions(ctx: CardContext, assessment: Assessment, orders: list[ImagingOrder], sex, age,
                      ratings: dict[str, Rating] | None = None) -> list[dict]:
    tier = assessment.tier
    spec = recommendations()["tiers"][tier]
    out: list[dict] = []
    if tier == "emergency":
        study = spec["study_cancer" if assessment.known_cancer else "study"]
        for order in orders:
            if order.orderable == study or (order.modality.startswith("mri") and not assessment.known_cancer):
                out.append(_suggestion(ctx, f"stat-{order.reference}", "Make this MRI a STAT order",
                                       [escalate_order_action(
                                           order, "stat", rating=(ratings or {}).get(order.reference),
                                           consult_id=stable_uuid(ctx, "consult", order.reference)
                                           if (ratings or {}).get(order.reference) else None)], True))
            else:
                out.append(_suggestion(ctx, f"replace-{order.reference}",
                                       "Replace with STAT MRI" + (" of the whole spine" if assessment.known_cancer
                                                                  else " lumbar spine without and with contrast"),
                                       replace_order_actions(order, study, patient_id=ctx.patient_id,
                                                             encounter_id=ctx.encounter_id,
                                                             reasons=_reasons(assessment), priority="stat"), True))
        referral = spec["referral_cancer" if assessment.known_cancer else "referral"]
        out.append(_suggestion(ctx, "referral", "Refer for same-day emergency evaluation",
                               [_create(ctx, referral, assessment, "stat", "Same-day emergency referral")], True))
    elif tier == "imaging":
        for order in orders:
            if order.orderable != spec["study"]:
                out.append(_suggestion(ctx, f"replace-{order.reference}",
                                       "Replace with MRI lumbar spine without and with IV contrast",
                                       replace_order_actions(order, spec["study"], patient_id=ctx.patient_id,
                                                             encounter_id=ctx.encounter_id,
                                                             reasons=_reasons(assessment),
                                                             priority=spec["priority"]),
                                       order.modality in ("radiograph", "ct")))
        out.append(_labs_suggestion(ctx, assessment, sex, age, recommended=True))
    elif tier == "consider":
        out.append(_labs_suggestion(ctx, assessment, sex, age, recommended=True))
    if tier in ("consider", "none"):
        for order in orders:
            if order.resource_id:
                out.append(_suggestion(ctx, f"remove-{order.reference}", "Remove the imaging order",
                                       [delete_order_action(order)], tier == "none"))
    return out


# ---------------------------------------------------------------- the card

def _links(keys: list[str]) -> list[dict]:
    links = recommendations()["links"]
    return [{"label": links[k]["label"], "url": links[k]["url"], "type": "absolute"} for k in keys]


def _summary(assessment: Assessment, order_hook: bool) -> str:
    spec = recommendations()["tiers"][assessment.tier]
    if assessment.tier == "emergency" and assessment.known_cancer:
        text = spec["summary_cancer"]
    elif assessment.tier == "imaging" and not assessment.known_cancer and any(
            f.id == "fever" for f in assessment.red_flags) and not any(
            f.strong for f in assessment.red_flags):
        text = spec["summary_infection"]
    elif assessment.tier == "none" and order_hook:
        text = spec["summary_order_incomplete" if assessment.unavailable else "summary_order"]
    elif assessment.tier == "none" and assessment.unavailable:
        text = spec["summary_incomplete"]
    else:
        text = spec["summary"]
    return text if len(text) < 140 else text[:136] + "..."


def build_card(ctx: CardContext, assessment: Assessment, *, sex=None, age=None,
               orders: list[ImagingOrder] | None = None,
               ratings: list[tuple[ImagingOrder, Rating]] | None = None) -> dict:
    tier = assessment.tier
    spec = recommendations()["tiers"][tier]
    order_hook = orders is not None
    next_step = spec["next_step_cancer"] if tier == "emergency" and assessment.known_cancer else spec["next_step"]
    suggestions = (order_suggestions(ctx, assessment, orders, sex, age, {o.reference: r for o, r in ratings or []})
                   if order_hook
                   else chart_suggestions(ctx, assessment, sex, age))
    systems = recommendations()["code_systems"]
    card = {
        "uuid": stable_uuid(ctx, "card", tier),
        "summary": _summary(assessment, order_hook),
        "detail": detail_markdown(assessment, next_step, ratings or []),
        "indicator": INDICATORS[tier],
        "source": {
            "label": recommendations()["source_label"],
            "topic": {"system": systems["topic"], **spec["topic"]},
        },
    }
    if ctx.source_url:
        card["source"]["url"] = ctx.source_url
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = "any"
    card["overrideReasons"] = [{"system": systems["override_reason"], **reason}
                               for reason in recommendations()["override_reasons"][tier]]
    card["links"] = _links(spec["links"])
    card["extension"] = {"lbp-redflags": extension(assessment, ratings or [])}
    return card


def extension(assessment: Assessment, ratings: list[tuple[ImagingOrder, Rating]]) -> dict:
    ext = {
        "tier": assessment.tier,
        "redFlags": assessment.flag_ids,
        "evidence": {flag.id: sorted({ev.reference for ev in flag.evidence}) for flag in assessment.red_flags},
        "dataComplete": not assessment.unavailable,
        "rulesVersion": rules_version(),
    }
    if assessment.unavailable:
        ext["unavailable"] = list(assessment.unavailable)
    if assessment.lbp_days is not None:
        ext["lbpDays"] = assessment.lbp_days
    if assessment.probability is not None:
        ext["estimatedProbability"] = round(assessment.probability, 4)
    if ratings:
        ext["ratings"] = [{**({"order": o.reference} if o.resource_id else {}), "study": o.orderable or o.modality,
                           "modality": r.modality, "rating": r.pama_code,
                           "acrCategory": r.acr_category, "acrVariant": r.acr_variant} for o, r in ratings]
    return ext


def follow_up_card(ctx: CardContext, assessment: Assessment, ratings: list[tuple[ImagingOrder, Rating]]) -> dict:
    """order-sign after the clinician accepted the same advice at order-select: the rating only."""
    worst = "not-appropriate" if any(r.pama_code == "not-appropriate" for _, r in ratings) else "appropriate"
    lines = [f"**Order rating** ({o.reference}): {r.pama_code} — {r.explanation} _({r.source})_" for o, r in ratings]
    lines.append("")
    lines.append("The full red-flag advice for this patient and study was shown and accepted at order "
                 "selection; it is not repeated here.")
    if assessment.unavailable:
        lines.append("")
        lines.append("**Not checked — data unavailable:**")
        lines.extend(f"- {item}" for item in assessment.unavailable)
    ext = extension(assessment, ratings)
    ext["followUp"] = True
    return {
        "uuid": stable_uuid(ctx, "card", assessment.tier),
        "summary": f"Lumbar imaging rated {worst.replace('-', ' ')}; advice already accepted at order selection",
        "detail": "\n".join(lines),
        "indicator": INDICATORS[assessment.tier],
        "source": {"label": recommendations()["source_label"],
                   "topic": {"system": recommendations()["code_systems"]["topic"],
                             **recommendations()["tiers"][assessment.tier]["topic"]}},
        "extension": {"lbp-redflags": ext},
    }


def rating_actions(ctx: CardContext, ratings: list[tuple[ImagingOrder, Rating]]) -> list[dict]:
    """An update per rated draft; a draft without an id cannot be updated, so it gets none."""
    return [rating_action(order, rating, stable_uuid(ctx, "consult", order.reference))
            for order, rating in ratings if order.resource_id]


__all__ = ["CardContext", "build_card", "follow_up_card", "rating_actions", "stable_uuid"]
