"""Blueprint: discovery and the hook endpoints (POST /cds-services/<id>)."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from flask import Blueprint, current_app, g, jsonify, request

from cards import respond
from fhir_mappings.record import PatientRecord

from .errors import ServiceError
from .fhir_client import allowed
from .prefetch import gather
from .services import SERVICES, discovery
from .validation import problems

bp = Blueprint("hooks", __name__)
log = logging.getLogger("lbp_redflags.hooks")


@bp.get("/cds-services")
def list_services():
    return jsonify(discovery())


def read_json_body() -> dict:
    """The request's JSON object, or a 415/400 that says what is wrong."""
    mimetype = request.mimetype or ""
    if not (mimetype == "application/json" or mimetype.endswith("+json")):
        raise ServiceError(415, "the request body must be JSON (Content-Type: application/json)",
                           [{"field": "Content-Type", "reason": f"got {mimetype or 'none'}"}])
    raw = request.get_data(cache=True)  # raises 413 beyond MAX_CONTENT_LENGTH
    if not raw.strip():
        raise ServiceError(400, "the request body is empty")
    body = request.get_json(silent=True)
    if body is None:
        raise ServiceError(400, "the request body is not valid JSON")
    if not isinstance(body, dict):
        raise ServiceError(400, "the request body must be a JSON object")
    return body


def service_or_404(service_id: str):
    service = SERVICES.get(service_id)
    if service is None:
        raise ServiceError(404, f"no CDS service with id '{service_id}'",
                           [{"field": "id", "reason": f"known services: {', '.join(SERVICES)}"}])
    return service


def validate_request(service, body: dict) -> None:
    found = problems("request", body)
    if isinstance(body.get("context"), dict):
        found += problems(f"context.{service.hook}", body["context"], prefix="context")
    if isinstance(body.get("hook"), str) and body["hook"] != service.hook:
        found.append({"field": "hook", "reason": f"service '{service.id}' answers hook '{service.hook}', "
                                                 f"not '{body['hook']}'"})
    if found:
        raise ServiceError(400, "the request is not a valid CDS Hooks 2.0 request", found)


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str):
    started = time.perf_counter()
    service = service_or_404(service_id)
    body = read_json_body()
    g.hook_instance = body.get("hookInstance") if isinstance(body.get("hookInstance"), str) else None
    validate_request(service, body)

    settings = current_app.config["LBP_SETTINGS"]
    fhir_server = body.get("fhirServer")
    if fhir_server and not allowed(fhir_server, settings):
        raise ServiceError(403, "this service is not allowed to call the given fhirServer",
                           [{"field": "fhirServer", "reason": "not in the configured fhir_allowed_servers"}])

    client = current_app.extensions["lbp_fhir_client"]
    gathered = gather(body, client.fetch_all if fhir_server else None)
    context = body["context"]
    record = PatientRecord.from_resources(
        gathered.resources,
        draft_orders=context.get("draftOrders"),
        selections=tuple(context.get("selections") or ()),
        encounter_id=context.get("encounterId"),
        patient_id=context["patientId"],
        unavailable=gathered.unavailable,
    )
    if record.patient is None:
        raise ServiceError(412, "required data is unavailable: the Patient in prefetch is not the patient in context",
                           [{"field": "prefetch.patient", "reason": "Patient.id does not match context.patientId"}])
    today = datetime.now(UTC).date()
    store = current_app.extensions["lbp_store"]
    patient_id = context["patientId"]
    response = respond(
        service.hook, service.id, record, today=today, hook_instance=body["hookInstance"],
        source_url=settings.source_url or None,
        accepted_at_select=lambda tier, studies: store.acted_at_order_select(patient_id, tier, studies),
    )
    store.record_cards(service.id, body["hookInstance"], response.get("cards", []), patient_id=patient_id)

    log.info("hook=%s hookInstance=%s cards=%d sources=%s elapsed_ms=%.1f", service.hook, body["hookInstance"],
             len(response.get("cards", [])), ",".join(f"{k}:{v}" for k, v in gathered.sources.items()),
             (time.perf_counter() - started) * 1000)
    return jsonify(response)
