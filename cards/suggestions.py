"""FHIR R4 ServiceRequests and CDS Hooks actions for the suggestions on a card.

Pure functions, no HTTP. Every shape of ServiceRequest built here is validated with
``fhir.resources`` in tests/test_suggestions.py (every orderable, every option), not per card:
building the model cost about 1-2 ms per ServiceRequest on the hot path, for output whose shape is
fixed by this module. fhir.resources 8 ships FHIR R5 models by default and no separate R4 (4.0.1)
package; its ``R4B`` (4.3.0) models are used instead: ServiceRequest has the same elements in R4
and R4B, so a resource that validates there is valid R4. Reason codes copied from an EHR's draft
are the one input checked here (``CodeableConcept``), since their content is not ours.

Choices:

* ``status`` is ``draft`` and ``intent`` is ``proposal``. FHIR defines a proposal as "a suggestion
  made by someone/something that does not have an intention to ensure it occurs and without
  providing an authorization to act", which is what a decision-support suggestion is; the clinician
  who accepts it signs it into an order (intent ``order``) in the EHR.
* CPT codings carry no ``display`` (AMA descriptors are copyrighted); ``code.text`` is the
  project's own name for the study.
* A ``delete`` action names the draft in ``resourceId`` as one relative reference
  (``"ServiceRequest/sr1"``), as CDS Hooks 2.0.1 types it (its example:
  ``"resourceId": "ServiceRequest/procedure-request-1"``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

from fhir.resources.R4B.codeableconcept import CodeableConcept
from pydantic import ValidationError

from fhir_mappings.orders import ImagingOrder, category_coding
from fhir_mappings.orders import orderable as _orderable_entry

from .rating import Rating, modality_display, with_rating

PRIORITIES = ("routine", "urgent", "asap", "stat")
REASON_TYPES = ("Condition", "Observation", "DiagnosticReport", "DocumentReference")  # R4 reasonReference
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def _check_priority(priority: str) -> str:
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {PRIORITIES}, got {priority!r}")
    return priority


def _reference(resource_type: str, value: str) -> str:
    """``"123"`` or ``"Patient/123"`` -> ``"Patient/123"``; ValueError when it is not one."""
    if not isinstance(value, str):
        raise ValueError(f"{resource_type} id must be a string, got {value!r}")
    value = value.strip()
    prefix = f"{resource_type}/"
    rid = value[len(prefix) :] if value.startswith(prefix) else value
    if not _FHIR_ID.match(rid):
        raise ValueError(f"not a {resource_type} id: {value!r}")
    return prefix + rid


def _reason_reference(reason: Any) -> str:
    ref = reason.get("reference") if isinstance(reason, dict) else reason
    if not isinstance(ref, str) or "/" not in ref:
        raise ValueError(f"reason must be a relative reference such as 'Condition/c2', got {reason!r}")
    resource_type, _, rid = ref.strip().partition("/")
    if resource_type not in REASON_TYPES:
        raise ValueError(f"reasonReference must point to one of {REASON_TYPES}, got {ref!r}")
    return _reference(resource_type, rid)


def _codings(entry: dict[str, Any]) -> list[dict[str, str]]:
    codings = []
    for code in entry.get("codes", ()):
        if not code.get("suggest"):
            continue
        coding = {"system": code["system"], "code": code["code"]}
        if code.get("display"):
            coding["display"] = code["display"]
        codings.append(coding)
    return codings


def _valid_concept(concept: Any) -> bool:
    """Reason codes copied from a draft are kept only when they are valid FHIR (EHR data can be messy)."""
    if not isinstance(concept, dict) or not concept:
        return False
    try:
        CodeableConcept.model_validate(concept)
    except (ValidationError, ValueError, TypeError):
        return False
    return True


def service_request(
    orderable: str,
    *,
    patient_id: str,
    encounter_id: str | None = None,
    reasons: Sequence[str] = (),
    priority: str = "routine",
    note: str | None = None,
    reason_codes: Sequence[dict] = (),
    request_id: str | None = None,
) -> dict[str, Any]:
    """A draft ServiceRequest (intent ``proposal``) for an entry of ``knowledge/orderables.json``.

    ``reasons`` are relative references (``"Condition/c2"``, ``"Observation/o1"``) put in
    ``reasonReference``; ``reason_codes`` are CodeableConcepts put in ``reasonCode``.
    Raises ValueError for an unknown orderable or priority, or a malformed reference.
    """
    try:
        entry = _orderable_entry(orderable)
    except KeyError:
        raise ValueError(f"unknown orderable {orderable!r}") from None
    data: dict[str, Any] = {"resourceType": "ServiceRequest"}
    if request_id is not None:
        if not isinstance(request_id, str) or not _FHIR_ID.match(request_id):
            raise ValueError(f"not a FHIR id: {request_id!r}")
        data["id"] = request_id
    data.update(
        {
            "status": "draft",
            "intent": "proposal",
            "category": [{"coding": [category_coding(entry["kind"])]}],
            "priority": _check_priority(priority),
            "code": {"coding": _codings(entry), "text": entry["display"]},
            "subject": {"reference": _reference("Patient", patient_id)},
        }
    )
    if encounter_id:
        data["encounter"] = {"reference": _reference("Encounter", encounter_id)}
    codes = [copy.deepcopy(c) for c in reason_codes if _valid_concept(c)]
    if codes:
        data["reasonCode"] = codes
    refs: list[str] = []
    for reason in reasons:
        ref = _reason_reference(reason)
        if ref not in refs:
            refs.append(ref)
    if refs:
        data["reasonReference"] = [{"reference": r} for r in refs]
    if note:
        data["note"] = [{"text": note}]
    return data


def _draft_reference(resource: dict, key: str, resource_type: str) -> str | None:
    value = resource.get(key)
    ref = value.get("reference") if isinstance(value, dict) else None
    if isinstance(ref, str) and ref.startswith(f"{resource_type}/"):
        try:
            return _reference(resource_type, ref)
        except ValueError:
            return None
    return None


def _draft_label(order: ImagingOrder) -> str:
    concept = order.resource.get("code")
    text = concept.get("text") if isinstance(concept, dict) else None
    if isinstance(text, str) and text.strip():
        return text.strip()
    return modality_display(order.modality)


def replace_order_actions(
    order: ImagingOrder,
    new_orderable: str,
    *,
    patient_id: str | None = None,
    encounter_id: str | None = None,
    reasons: Sequence[str] = (),
    priority: str | None = None,
    note: str | None = None,
    request_id: str | None = None,
) -> list[dict[str, Any]]:
    """CDS Hooks actions that swap a draft imaging order for another orderable:
    ``delete`` the draft, then ``create`` the new ServiceRequest.

    The patient, encounter, reasonCode and reasonReference default to the draft's; ``priority``
    defaults to the draft's (``routine`` when it has none). No ``delete`` is produced for a draft
    without an id, since the client could not tell which order to remove.
    """
    draft = order.resource
    patient = patient_id or _draft_reference(draft, "subject", "Patient")
    if not patient:
        raise ValueError("patient_id is needed: the draft order has no Patient subject")
    encounter = encounter_id or _draft_reference(draft, "encounter", "Encounter")
    draft_priority = draft.get("priority")
    if priority is None:
        priority = draft_priority if draft_priority in PRIORITIES else "routine"

    draft_reasons: list[str] = []
    draft_refs = draft.get("reasonReference")
    for item in draft_refs if isinstance(draft_refs, list) else []:
        try:
            draft_reasons.append(_reason_reference(item))
        except ValueError:
            continue  # a reason the new order cannot carry is dropped, not fatal
    reason_codes = draft.get("reasonCode") if isinstance(draft.get("reasonCode"), list) else []

    new_request = service_request(
        new_orderable,
        patient_id=patient,
        encounter_id=encounter,
        reasons=[*draft_reasons, *reasons],
        priority=priority,
        note=note,
        reason_codes=reason_codes,
        request_id=request_id,
    )
    actions: list[dict[str, Any]] = []
    if order.resource_id:
        actions.append(delete_order_action(order))
    actions.append(
        {
            "type": "create",
            "description": f"Order {new_request['code']['text']} ({priority}).",
            "resource": new_request,
        }
    )
    return actions


def delete_order_action(order: ImagingOrder, description: str | None = None) -> dict[str, Any]:
    """CDS Hooks ``delete`` action removing a draft order (ValueError when the draft has no id)."""
    if not order.resource_id:
        raise ValueError("the draft order has no id, so it cannot be named in a delete action")
    return {
        "type": "delete",
        "description": description or f"Remove the draft order: {_draft_label(order)}.",
        "resourceId": f"ServiceRequest/{order.resource_id}",
    }


def escalate_order_action(
    order: ImagingOrder,
    priority: str = "stat",
    *,
    rating: Rating | None = None,
    consult_id: str | None = None,
) -> dict[str, Any]:
    """CDS Hooks ``update`` action that raises the draft's priority (the input is not changed).

    With ``rating`` and ``consult_id`` the same update also carries the PAMA rating extensions, so
    that one action holds the whole updated resource.
    """
    _check_priority(priority)
    if rating is not None:
        if consult_id is None:
            raise ValueError("consult_id is needed with a rating")
        resource = with_rating(order.resource, rating, consult_id)
    else:
        resource = copy.deepcopy(order.resource)
    resource["priority"] = priority
    return {
        "type": "update",
        "description": f"Change the priority of the draft order ({_draft_label(order)}) to {priority}.",
        "resource": resource,
    }
