"""GET /openapi.json: an OpenAPI 3.1 document of the service's own API.

Built from what the service already keeps as data: the JSON Schemas in schemas/ (the same ones
requests are validated with) and the services declared in services.py, so the document cannot
drift from the behaviour. Security is declared only when the settings require authentication.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime
from functools import cache

from flask import Blueprint, current_app, jsonify

from .cli import example_request
from .example_patients import examples
from .services import SERVICES
from .settings import Settings
from .validation import SCHEMA_DIR

bp = Blueprint("openapi", __name__)

JSON = "application/json"

# Statuses every error response may carry, and when (the README's error table, shortened).
ERRORS = {
    "400": "Malformed JSON, not an object, nested deeper than max_json_depth, or not a valid request",
    "401": "Authentication of CDS clients is required and the JWT is missing or not accepted",
    "403": "fhirServer is not allowed for this client",
    "404": "Unknown service or path; feedback for a card this service did not issue",
    "405": "Method not allowed on this path (Allow lists the methods that are)",
    "412": "Required data (the Patient and its Conditions) is unavailable",
    "413": "Body over max_content_length, a string over max_string_length, a Bundle over max_bundle_entries "
           "or draftOrders over max_draft_orders",
    "415": "The body is not JSON",
    "429": "Over rate_limit_per_minute for this client (per worker process); Retry-After says when to retry",
    "503": "Cannot serve right now: the database (token replay cache, readiness) cannot be reached",
}
HOOK_ERRORS = ("400", "401", "403", "405", "412", "413", "415", "429", "503")
FEEDBACK_ERRORS = ("400", "401", "404", "405", "413", "415", "429", "503")
GET_ERRORS = ("401", "405", "503")


def _schema_name(filename: str) -> str:
    return filename.removesuffix(".schema.json")


def _rewrite_refs(node, owner: str):
    """Point file refs (bundle.schema.json) and local $defs (#/$defs/card) at components/schemas."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                if value.startswith("#/$defs/"):
                    value = f"#/components/schemas/{owner}.{value.removeprefix('#/$defs/')}"
                elif value.endswith(".schema.json"):
                    value = f"#/components/schemas/{_schema_name(value.rsplit('/', 1)[-1])}"
            out[key] = _rewrite_refs(value, owner)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(item, owner) for item in node]
    return node


@cache
def component_schemas() -> dict:
    """Every schemas/*.schema.json as a component; $defs hoisted as <file>.<def>."""
    components = {}
    for path in sorted(SCHEMA_DIR.glob("*.schema.json")):
        name = _schema_name(path.name)
        schema = json.loads(path.read_text(encoding="utf-8"))
        for key in ("$schema", "$id"):
            schema.pop(key, None)
        for def_name, definition in schema.pop("$defs", {}).items():
            components[f"{name}.{def_name}"] = _rewrite_refs(definition, name)
        components[name] = _rewrite_refs(schema, name)
    return components


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(statuses) -> dict:
    return {status: {"$ref": f"#/components/responses/{status}"} for status in statuses}


def _error_responses() -> dict:
    responses = {}
    for status, description in ERRORS.items():
        response = _json(_ref("error"), description)
        header = {"401": "WWW-Authenticate", "405": "Allow", "429": "Retry-After"}.get(status)
        if header:
            response["headers"] = {header: {"required": True, "schema": {"type": "string"}}}
        responses[status] = response
    return responses


def request_examples(today: date) -> dict[str, dict]:
    """Service id -> a complete request about a bundled example patient (order-sign reuses order-select's)."""
    found: dict[str, dict] = {}
    for example in examples(today):
        hooks = [example["hook"]] + (["order-sign"] if example["hook"] == "order-select" else [])
        for hook in hooks:
            service_id, body = example_request({**example, "hook": hook})
            found.setdefault(service_id, {"summary": example["title"], "value": body})
    return found


def _hook_operation(service, example: dict | None) -> dict:
    request_schema = {"allOf": [_ref("request"), {
        "properties": {"hook": {"const": service.hook}, "context": _ref(f"context.{service.hook}")},
    }]}
    media = {"schema": request_schema}
    if example:
        media["examples"] = {"example-patient": example}
    return {"post": {
        "operationId": service.id.replace("-", "_"),
        "summary": service.title,
        "description": service.description,
        "tags": ["CDS Hooks"],
        "requestBody": {"required": True, "content": {JSON: media}},
        "responses": {"200": _json(_ref("response"), "Cards (possibly none) and systemActions"),
                      **_errors(HOOK_ERRORS)},
    }}


def _feedback_operation() -> dict:
    stored = {"type": "object", "required": ["stored"], "properties": {"stored": {"type": "integer", "minimum": 0}},
              "additionalProperties": False}
    return {"post": {
        "operationId": "feedback",
        "summary": "Feedback on cards this service issued (CDS Hooks 2.0 feedback)",
        "tags": ["CDS Hooks"],
        "parameters": [{"name": "service_id", "in": "path", "required": True,
                        "schema": {"type": "string", "enum": list(SERVICES)}}],
        "requestBody": {"required": True, "content": {JSON: {"schema": _ref("feedback")}}},
        "responses": {"200": _json(stored, "How many feedback items were stored"), **_errors(FEEDBACK_ERRORS)},
    }}


def _public_get(operation_id: str, summary: str, ok: dict, errors) -> dict:
    return {"get": {"operationId": operation_id, "summary": summary, "security": [],
                    "responses": {"200": ok, **_errors(errors)}}}


def build(settings: Settings, today: date) -> dict:
    hook_examples = request_examples(today)
    status = {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}},
              "additionalProperties": False}
    paths = {
        "/cds-services": {"get": {
            "operationId": "discovery", "summary": "CDS Hooks 2.0 discovery: the services and their prefetch",
            "tags": ["CDS Hooks"], "responses": {"200": _json(_ref("discovery"), "The services"),
                                                 **_errors(GET_ERRORS)}}},
        **{f"/cds-services/{s.id}": _hook_operation(s, hook_examples.get(s.id)) for s in SERVICES.values()},
        "/cds-services/{service_id}/feedback": _feedback_operation(),
        "/healthz": _public_get("healthz", "The process is alive (no data)", _json(status, "Alive"), ("405",)),
        "/readyz": _public_get("readyz", "The database is reachable and the configuration valid (no data); "
                                         "503 when not (the service's log says why)",
                               _json(status, "Ready"), ("405", "503")),
        "/openapi.json": _public_get("openapi", "This document", {"description": "OpenAPI 3.1 document",
                                                                    "content": {JSON: {"schema": {"type": "object"}}}},
                                     ("405",)),
    }
    document = {
        "openapi": "3.1.0",
        "info": {"title": "lbp-redflags", "version": "1.0",
                 "description": "CDS Hooks 2.0 service: red flags of cancer and cord compression in low back "
                                "pain. Errors share one JSON shape (components/schemas/error)."},
        "paths": paths,
        "components": {"schemas": component_schemas(), "responses": _error_responses()},
    }
    if settings.public_base_url:
        document["servers"] = [{"url": settings.public_base_url}]
    if settings.auth.required:
        document["components"]["securitySchemes"] = {
            "cdsClientJwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                             "description": "CDS Hooks 2.0 client JWT signed by a configured issuer "
                                            "(aud: the URL called)"}}
        document["security"] = [{"cdsClientJwt": []}]
    return copy.deepcopy(document)


@bp.get("/openapi.json")
def openapi_document():
    today = datetime.now(UTC).date()  # the examples' dates are relative to the day of use
    cached = current_app.extensions.get("lbp_openapi")
    if not cached or cached[0] != today:
        cached = current_app.extensions["lbp_openapi"] = (today, build(current_app.config["LBP_SETTINGS"], today))
    return jsonify(cached[1])
