"""Findings → assessment → CDS Hooks cards. ``respond`` is the whole clinical pipeline for one call."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

from fhir_mappings.findings import extract
from fhir_mappings.orders import lumbar_imaging_orders
from fhir_mappings.record import PatientRecord

from .assess import assess
from .plan import CardContext, make_plan
from .rating import rate
from .render import build_card, follow_up_card, rating_actions

ORDER_HOOKS = ("order-select", "order-sign")
# How the service names the active-orders query when it could not be read (cds_service/services.py,
# KEY_DESCRIPTIONS): it only keeps labs from being suggested twice, so it is no gap in the red-flag check.
ACTIVE_ORDERS = "active orders"


def respond(hook: str, service_id: str, record: PatientRecord, *, today: date, hook_instance: str,
            source_url: str | None = None,
            accepted_at_select: Callable[[str, list[str]], bool] | None = None) -> dict:
    """The CDS Hooks response body for one hook call: {"cards": [...]} (+ systemActions for orders).

    accepted_at_select(tier, studies) tells whether the clinician already accepted the same advice
    at order-select; order-sign then shows the rating only — never for an emergency.
    """
    patient = record.patient or {}
    patient_id = record.patient_id or (patient.get("id") if isinstance(patient.get("id"), str) else None)
    ctx = CardContext(hook, service_id, hook_instance, patient_id, record.encounter_id, source_url)
    facts = extract(record, today)
    orders_unchecked = [u for u in facts.unavailable if u.startswith(ACTIVE_ORDERS)]
    facts.unavailable = [u for u in facts.unavailable if u not in orders_unchecked]
    orders = lumbar_imaging_orders(record.draft_orders) if hook in ORDER_HOOKS else []
    if hook in ORDER_HOOKS and not orders:
        return {"cards": []}  # order hooks speak only about lumbar-spine imaging
    facts.orders = orders
    assessment = assess(facts)
    if not assessment.applicable:
        return {"cards": []}

    active_orders = [r for r in record.of_type("ServiceRequest") if r.get("status") == "active"]
    if hook not in ORDER_HOOKS:
        if assessment.tier == "none" and not assessment.unavailable:
            return {"cards": []}
        plan = make_plan(ctx, assessment, facts, active_orders=active_orders, orders_unchecked=bool(orders_unchecked))
        return {"cards": [build_card(ctx, assessment, plan, today=today)]}

    weeks = assessment.lbp_weeks
    ratings = [(order, rate(order, assessment.tier, weeks)) for order in orders]
    # order-select speaks of what the clinician selected; a selection without lumbar imaging gets no
    # card (the drafts are still rated). A client sending no selections at all gets advice on all drafts.
    if hook == "order-select" and record.selections:
        spoken = [o for o in orders if o.reference in record.selections]
    else:
        spoken = orders
    if not spoken and assessment.tier == "emergency":
        spoken = orders  # an emergency is never kept back for want of a selection
    actions = rating_actions(ctx, ratings)
    if not spoken:
        return {"cards": [], "systemActions": actions, "extension": {"systemActions": actions}} if actions \
            else {"cards": []}
    studies = sorted({o.orderable or o.modality for o in spoken})
    spoken_ratings = [(o, r) for o, r in ratings if o in spoken]
    plan = make_plan(ctx, assessment, facts, active_orders=active_orders, orders=spoken,
                     orders_unchecked=bool(orders_unchecked),
                     ratings={o.reference: r for o, r in spoken_ratings})
    if (hook == "order-sign" and assessment.tier != "emergency" and accepted_at_select is not None
            and accepted_at_select(assessment.tier, studies)):
        card = follow_up_card(ctx, assessment, plan, spoken_ratings)
    else:
        card = build_card(ctx, assessment, plan, today=today, ratings=spoken_ratings, order_hook=True)
    response = {"cards": [card]}
    if actions:
        response.update(systemActions=actions, extension={"systemActions": actions})
    return response
