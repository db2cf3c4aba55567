"""One step decides what a card suggests, from the assessment and the record: the situation (tier,
refined by the rule that set it), the study and referral, the labs still worth ordering, and the
CDS suggestions with their actions. Rendering (cards/render.py) only formats this plan.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import date

from fhir_mappings.findings import Facts, _analytes
from fhir_mappings.orders import ImagingOrder, orderable
from fhir_mappings.terminology import value_set

from .assess import Assessment
from .data import recommendations
from .rating import Rating, rate, with_rating
from .suggestions import (
    REASON_TYPES,
    delete_order_action,
    escalate_order_action,
    replace_order_actions,
    service_request,
)

FHIR_REFERENCE = re.compile(r"^[A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")
UUID_NAMESPACE = uuid.UUID("6f1d3c1e-2b7a-4e55-9a0c-5d2f0b7c9e41")


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


@dataclass
class Plan:
    situation: str  # key of recommendations.json "situations"
    labs: list[str] = field(default_factory=list)  # lab orderables still worth ordering
    labs_not_repeated: list[str] = field(default_factory=list)  # "ESR 12 mm/h 3 days ago", "CBC ordered"
    urology: bool = False
    orders_unchecked: bool = False  # the active orders could not be read: a suggested lab may be ordered already
    suggestions: list[dict] = field(default_factory=list)

    @property
    def spec(self) -> dict:
        return recommendations()["situations"][self.situation]


def situation(assessment: Assessment) -> str:
    if assessment.tier == "emergency":
        return "emergency-mscc" if "suspected-mscc" in assessment.rules else "emergency"
    if assessment.tier == "imaging":
        return "imaging-infection" if assessment.rules == ["infection"] else "imaging"
    return assessment.tier


# ---------------------------------------------------------------- labs

def _recent_final(facts: Facts, analyte: str, days: int) -> str | None:
    for result in reversed(facts.series.get(analyte, [])):
        day = result.evidence.date
        if not result.preliminary and day is not None and 0 <= (facts.today - day).days <= days:
            return f"{shown_value(result.evidence)}, {ago(day, facts.today)}"
    return None


def _ordered(entry: dict, active_orders: list[dict]) -> bool:
    codes = {(c["system"], c["code"]) for c in entry.get("codes", ())}
    for request in active_orders:
        concept = request.get("code") if isinstance(request.get("code"), dict) else {}
        codings = concept.get("coding") if isinstance(concept.get("coding"), list) else []
        if any(isinstance(c, dict) and (c.get("system"), c.get("code")) in codes for c in codings):
            return True
        # the analytes' own value sets, by code or text ("ESR" ordered as free text)
        if any(value_set(_analytes()[a]["value_set"]).match(concept) for a in entry.get("analytes", ())):
            return True
    return False


def _labs(assessment: Assessment, facts: Facts, active_orders: list[dict]) -> tuple[list[str], list[str]]:
    spec = recommendations()["labs"]
    wanted = list(spec["orderables"])
    if facts.sex == "male" and facts.age is not None and facts.age >= 50:
        wanted.append(spec["psa_orderable"])
    keep, skipped = [], []
    for lab in wanted:
        entry = orderable(lab)
        name = entry["display"].split(" (")[0]
        recent = next((r for a in entry.get("analytes", ())
                       if (r := _recent_final(facts, a, spec["not_repeated_days"]))), None)
        if recent:
            skipped.append(f"{name} {recent}")
        elif _ordered(entry, active_orders):
            skipped.append(f"{name} already ordered")
        else:
            keep.append(lab)
    return keep, skipped


def shown_value(ev) -> str:
    """'48 ng/mL'; a converted value shows its converted form ('6 mmol/L (= 9.67 g/dL)' → '9.67 g/dL')."""
    value = ev.value or ""
    if "(= " in value:
        value = value.split("(= ", 1)[1].rstrip(")")
    return value.replace(" Cel", " °C").replace("[degF]", "°F")


def ago(day: date | None, today: date) -> str:
    """'today', '3 days ago', '5 weeks ago', '14 months ago', '6 years ago'."""
    if day is None:
        return "date unknown"
    days = (today - day).days
    if days <= 0:
        return "today"
    if days == 1:
        return "yesterday"
    if days < 14:
        return f"{days} days ago"
    if days < 63:
        return f"{days // 7} weeks ago"
    if days < 730:
        return f"{round(days / 30.44)} months ago"
    return f"{days // 365} years ago"


# ---------------------------------------------------------------- actions

def _reasons(assessment: Assessment) -> list[str]:
    refs: list[str] = []
    for flag in assessment.red_flags:
        for ev in flag.evidence:
            for ref in ev.reference.split(", "):
                if FHIR_REFERENCE.match(ref) and ref.split("/")[0] in REASON_TYPES and ref not in refs:
                    refs.append(ref)
    return refs[:10]


def _rated(resource: dict, study: str, assessment: Assessment, ctx: CardContext) -> dict:
    """A suggested imaging order carries its own PAMA rating (Argonaut), so the EHR can show it
    before the clinician switches."""
    modality = orderable(study).get("modality")
    if not modality:
        return resource
    rating = rate(modality, assessment.tier, assessment.lbp_weeks)
    return with_rating(resource, rating, stable_uuid(ctx, "consult", study))


def _create(ctx, orderable_id, assessment, priority, description) -> dict:
    resource = service_request(orderable_id, patient_id=ctx.patient_id, encounter_id=ctx.encounter_id,
                               reasons=_reasons(assessment), priority=priority)
    if orderable(orderable_id)["kind"] == "imaging":
        resource = _rated(resource, orderable_id, assessment, ctx)
    return {"type": "create", "description": description, "resource": resource}


def _suggestion(ctx: CardContext, key: str, label: str, actions: list[dict], recommended: bool) -> dict:
    return {"label": label, "uuid": stable_uuid(ctx, "suggestion", key), "isRecommended": recommended,
            "actions": actions}


def _display(orderable_id: str) -> str:
    return orderable(orderable_id)["display"]


# ---------------------------------------------------------------- the plan

def make_plan(ctx: CardContext, assessment: Assessment, facts: Facts, *, active_orders: list[dict] = (),
              orders: list[ImagingOrder] | None = None, ratings: dict[str, Rating] | None = None,
              orders_unchecked: bool = False) -> Plan:
    plan = Plan(situation(assessment), orders_unchecked=orders_unchecked)
    spec = plan.spec
    if spec.get("labs"):
        plan.labs, plan.labs_not_repeated = _labs(assessment, facts, list(active_orders))
    psa = assessment.flag("elevated-psa")
    plan.urology = bool(psa and psa.strong and not assessment.known_cancer and assessment.tier != "emergency")
    out = plan.suggestions
    study, referral, priority = spec.get("study"), spec.get("referral"), spec.get("priority", "routine")
    if orders is None:  # patient-view, encounter-start
        if referral:
            out.append(_suggestion(ctx, "referral", _display(referral),
                                   [_create(ctx, referral, assessment, priority, _display(referral))], True))
        if study:
            label = f"Order {_display(study)}" + (" (STAT)" if priority == "stat" else "")
            out.append(_suggestion(ctx, "study", label,
                                   [_create(ctx, study, assessment, priority, label)], True))
    else:
        out.extend(_order_suggestions(ctx, assessment, plan, orders, ratings or {}))
    if plan.urology:
        out.append(_suggestion(ctx, "urology", _display("referral-urology"),
                               [_create(ctx, "referral-urology", assessment, "urgent", _display("referral-urology"))],
                               True))
    if plan.labs:
        names = ", ".join(orderable(lab)["display"].split(" (")[0] for lab in plan.labs)
        out.append(_suggestion(ctx, "labs", f"Order labs: {names}",
                               [_create(ctx, lab, assessment, "routine", f"Order {orderable(lab)['display']}")
                                for lab in plan.labs], True))
    return plan


def _order_suggestions(ctx, assessment, plan, orders, ratings) -> list[dict]:
    spec, tier = plan.spec, assessment.tier
    study, priority = spec.get("study"), spec.get("priority", "routine")
    out = []
    if tier == "emergency":
        for order in orders:
            if order.orderable == study or (order.modality.startswith("mri") and study == "mri-lumbar-without-with"):
                rating = ratings.get(order.reference)
                out.append(_suggestion(ctx, f"stat-{order.reference}", "Make this MRI a STAT order",
                                       [escalate_order_action(order, "stat", rating=rating,
                                                              consult_id=stable_uuid(ctx, "consult", order.reference)
                                                              if rating else None)], True))
            else:
                out.append(_replace(ctx, assessment, order, study, "stat", True))
        referral = spec["referral"]
        out.append(_suggestion(ctx, "referral", _display(referral),
                               [_create(ctx, referral, assessment, "stat", _display(referral))], True))
    elif tier == "imaging":
        for order in orders:
            if order.orderable != study:
                out.append(_replace(ctx, assessment, order, study, priority, order.modality in ("radiograph", "ct")))
    else:
        for order in orders:
            if order.resource_id:
                out.append(_suggestion(ctx, f"remove-{order.reference}", "Remove the imaging order",
                                       [delete_order_action(order)], tier == "none"))
    return out


def _replace(ctx, assessment, order, study, priority, recommended) -> dict:
    actions = replace_order_actions(order, study, patient_id=ctx.patient_id, encounter_id=ctx.encounter_id,
                                    reasons=_reasons(assessment), priority=priority)
    actions[-1]["resource"] = _rated(actions[-1]["resource"], study, assessment, ctx)
    label = f"Replace with {_display(study)}" + (" (STAT)" if priority == "stat" else "")
    return _suggestion(ctx, f"replace-{order.reference}", label, actions, recommended)
