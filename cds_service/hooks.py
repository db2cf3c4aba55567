"""Blueprint: discovery and the hook endpoints (POST /cds-services/<id>)."""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime, timedelta
from functools import partial

from flask import Blueprint, current_app, g, jsonify, request

from cards import respond
from cards.data import rules_version
from fhir_mappings.record import PatientRecord
from fhir_mappings.terminology import server_answers

from . import json_body, outbound
from .errors import ServiceError, body_too_large
from .metrics import count_cards, metered
from .prefetch import gather
from .services import SERVICES, discovery
from .store import CallRecord
from .switches import apply_switches, work_up_done_reasons
from .terminology_server import lookups
from .validation import check_draft_orders, problems

bp = Blueprint("hooks", __name__)
SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,256}$")  # what may be written to the log as a hookInstance
log = logging.getLogger("lbp_redflags.hooks")
RENDER_MARGIN_SECONDS = 0.5  # of the hook's deadline, kept to read the record and render the cards


@bp.get("/cds-services")
def list_services():
    return jsonify(discovery())


def read_json_body() -> dict:
    """The request's JSON object within the configured limits, or a 415/413/400 that says what is wrong."""
    mimetype = request.mimetype or ""
    if not (mimetype == "application/json" or mimetype.endswith("+json")):
        raise ServiceError(415, "the request body must be JSON (Content-Type: application/json)",
                           [{"field": "Content-Type", "reason": f"got {mimetype or 'none'}"}])
    settings = current_app.config["LBP_SETTINGS"]
    raw = request.get_data(cache=True)  # raises 413 beyond MAX_CONTENT_LENGTH when Content-Length says so
    if request.content_length is None and len(raw) >= settings.max_content_length:  # chunked: cut at the limit
        raise body_too_large(settings.max_content_length)
    if not raw.strip():
        raise ServiceError(400, "the request body is empty")
    return json_body.parse(raw, settings)


def fetch_deadline(settings, started: float) -> float:
    """When FHIR fetching stops (a time.monotonic() instant): at fhir_total_timeout, or earlier when the
    hook's deadline, less a margin to build the cards from what has arrived, comes first."""
    deadline = settings.hook_deadline_seconds
    return started + min(settings.fhir_total_timeout, deadline - min(RENDER_MARGIN_SECONDS, deadline / 4))


def service_or_404(service_id: str):
    service = SERVICES.get(service_id)
    if service is None:
        raise ServiceError(404, f"no CDS service with id '{service_id}'",
                           [{"field": "id", "reason": f"known services: {', '.join(SERVICES)}"}])
    return service


def validate_request(service, body: dict) -> None:
    check_draft_orders(body.get("context"), current_app.config["LBP_SETTINGS"])
    found = problems("request", body)
    if isinstance(body.get("context"), dict):
        found += problems(f"context.{service.hook}", body["context"], prefix="context")
    if isinstance(body.get("hook"), str) and body["hook"] != service.hook:
        found.append({"field": "hook", "reason": f"service '{service.id}' answers hook '{service.hook}', "
                                                 f"not '{body['hook']}'"})
    if found:
        raise ServiceError(400, "the request is not a valid CDS Hooks 2.0 request", found)


def fhir_server_policy(settings, fhir_server: str | None) -> outbound.OutboundPolicy:
    """The calling client's outbound policy, after refusing (403) a fhirServer it does not allow.

    Checked before any data is gathered, even when the prefetch is complete: a client naming a
    server it may not name is refused, and nothing is fetched. The message says which setting to
    change. The DNS resolver can be replaced (app.extensions["lbp_dns_resolver"]) for tests.
    """
    policy = outbound.policy_for(settings, g.get("cds_client"),
                                 resolver=current_app.extensions.get("lbp_dns_resolver"))
    if fhir_server:
        try:
            policy.check_server(fhir_server, timeout=settings.fhir_connect_timeout)
        except outbound.OutboundRefused as refused:
            log.warning("fhirServer refused (%s) hookInstance=%s", ",".join(refused.kinds), g.get("hook_instance"))
            raise ServiceError(403, f"this service may not call the given fhirServer: {refused.hint or refused.reason}",
                               [{"field": "fhirServer", "reason": refused.reason}]) from None
    return policy


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str):
    started = time.monotonic()
    service = service_or_404(service_id)
    body = read_json_body()
    hook_instance = body.get("hookInstance")
    g.hook_instance = hook_instance if isinstance(hook_instance, str) and SAFE_ID.match(hook_instance) else None
    validate_request(service, body)

    settings = current_app.config["LBP_SETTINGS"]
    fhir_server = body.get("fhirServer")
    policy = fhir_server_policy(settings, fhir_server)

    client = current_app.extensions["lbp_fhir_client"]
    fetcher = partial(client.fetch_all, policy=policy, deadline=fetch_deadline(settings, started))
    gathered = gather(body, metered(fetcher) if fhir_server else None, max_notes=settings.max_notes,
                      max_reports=settings.max_reports)
    context = body["context"]
    record = PatientRecord.from_resources(
        gathered.resources,
        draft_orders=context.get("draftOrders"),
        selections=tuple(context.get("selections") or ()),
        encounter_id=context.get("encounterId"),
        patient_id=context["patientId"],
        unavailable=gathered.unavailable,
        max_notes=settings.max_notes,
        max_reports=settings.max_reports,
        fhir_server=fhir_server,
        binary_errors=gathered.binary_errors,
    )
    if record.patient is None:
        raise ServiceError(412, "required data is unavailable: the Patient in prefetch is not the patient in context",
                           [{"field": "prefetch.patient", "reason": "Patient.id does not match context.patientId"}])
    today = datetime.now(UTC).date()
    store = current_app.extensions["lbp_store"]
    patient_id = context["patientId"]
    with server_answers(lookups(settings, (record.resources, record.draft_orders))):
        response = respond(
            service.hook, service.id, record, today=today, hook_instance=body["hookInstance"],
            source_url=settings.source_url or None,
            accepted_at_select=lambda tier, studies: store.acted_at_order_select(patient_id, tier, studies),
        )
    # The committee's switches, then the audit row (call and cards, shown or held back) before the answer.
    switched = apply_switches(response, settings, lambda: store.work_up_done(
        patient_id, work_up_done_reasons(), datetime.now(UTC) - timedelta(days=settings.snooze_days)))
    store.record_call(CallRecord(
        service.id, service.hook, body["hookInstance"], patient_id, response.get("cards", []),
        held_back=switched.held_back, client_issuer=getattr(g.get("cds_client"), "issuer", None),
        fetched_from_fhir="fetched" in gathered.sources.values(), silent=switched.silent,
        snoozed=switched.snoozed, latency_ms=(time.monotonic() - started) * 1000, rules_version=rules_version()))
    response = switched.response
    count_cards(service.id, response.get("cards", []))

    log.info("hook=%s hookInstance=%s cards=%d held_back=%d sources=%s elapsed_ms=%.1f", service.hook,
             body["hookInstance"], len(response.get("cards", [])), len(switched.held_back),
             ",".join(f"{k}:{v}" for k, v in gathered.sources.items()),
             (time.monotonic() - started) * 1000)
    return jsonify(response)
