"""Prometheus metrics, and the admin-only GET /metrics that serves them.

Under `lbp-redflags serve` every gunicorn worker writes its values to files in the directory named by
PROMETHEUS_MULTIPROC_DIR (a temporary directory `serve` creates and removes), and a scrape, whichever
worker answers it, adds up all workers (prometheus-client's multiprocess mode). In-process (tests,
`demo`, `check`) the values live in this process.

Labels carry service ids, hooks, HTTP statuses, resource types, tiers and outcomes: a small, fixed set
of values, never an identifier, so neither PHI nor unbounded series reach the monitoring system.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Callable

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from .services import SERVICES, prefetch_templates

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
log = logging.getLogger("lbp_redflags.metrics")

# Hook calls: EHRs wait for them, so the buckets are fine below a second and end past the deadline.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.0, 4.0, 8.0, 20.0)

REQUESTS = Counter("lbp_requests", "Hook and feedback calls answered, by service, hook and HTTP status "
                   "(hook is 'feedback' for feedback calls)", ["service", "hook", "status"])
REQUEST_LATENCY = Histogram("lbp_request_duration_seconds", "Time to answer a hook or feedback call, "
                            "by service and hook", ["service", "hook"], buckets=LATENCY_BUCKETS)
FHIR_FETCH_LATENCY = Histogram("lbp_fhir_fetch_duration_seconds", "Time to fetch one prefetch key from the "
                               "EHR's FHIR server (all pages), by resource type", ["resource_type"],
                               buckets=LATENCY_BUCKETS)
FHIR_FETCH_FAILURES = Counter("lbp_fhir_fetch_failures", "Prefetch keys that could not be fetched, by "
                              "resource type and reason", ["resource_type", "reason"])
CARDS = Counter("lbp_cards", "Cards returned, by service and tier", ["service", "tier"])
FEEDBACK = Counter("lbp_feedback", "Feedback items stored, by service and outcome", ["service", "outcome"])
AUDIT_ROWS_LOST = Counter("lbp_audit_rows_lost", "Issued cards the audit store could not write")

TIERS = frozenset({"emergency", "imaging", "consider", "none"})
OUTCOMES = frozenset({"accepted", "overridden"})
_METERED_ENDPOINTS = {"hooks.call_service": None, "feedback.give_feedback": "feedback"}


def _service_labels(service_id: str | None) -> tuple[str, str | None]:
    service = SERVICES.get(service_id or "")
    return (service.id, service.hook) if service else ("unknown", None)


def _resource_types() -> dict[str, str]:
    """Prefetch key -> resource type, from the services' templates."""
    return {key: template.split("?", 1)[0].split("/", 1)[0] for key, template in prefetch_templates().items()}


def fetch_resource_type(key: str) -> str:
    """A bounded label: the template's resource type of a prefetch key, else 'other'."""
    return _resource_types().get(key, "other")


def fetch_failure_reason(status: int | None, error: str | None) -> str:
    """A bounded label for FetchResult.error (free text that may quote the server)."""
    text = (error or "").lower()
    if "timed out" in text:
        return "timeout"
    if text.startswith("unreachable"):
        return "unreachable"
    if "not allowed" in text:
        return "not-allowed"
    if status in (401, 403):
        return f"http-{status}"
    if status and not 200 <= status < 300:
        return f"http-{status // 100}xx"
    if "malformed" in text:
        return "malformed"
    return "other"


def metered(fetch_all: Callable) -> Callable:
    """Wrap FhirClient.fetch_all (or a partial of it) so each key's latency and failure are counted."""
    def fetch_and_count(base_url: str, queries: dict[str, str], token: str | None, **kwargs):
        results = fetch_all(base_url, queries, token, **kwargs)
        for key, result in results.items():
            resource_type = fetch_resource_type(key)
            FHIR_FETCH_LATENCY.labels(resource_type).observe(result.elapsed_ms / 1000)
            if not result.ok:
                FHIR_FETCH_FAILURES.labels(resource_type, fetch_failure_reason(result.status, result.error)).inc()
        return results
    return fetch_and_count


def count_cards(service_id: str, cards: list[dict]) -> None:
    for card in cards:
        tier = ((card.get("extension") or {}).get("lbp-redflags") or {}).get("tier")
        CARDS.labels(_service_labels(service_id)[0], tier if tier in TIERS else "other").inc()


def count_feedback(service_id: str, items: list[dict]) -> None:
    for item in items:
        outcome = item.get("outcome")
        FEEDBACK.labels(_service_labels(service_id)[0], outcome if outcome in OUTCOMES else "other").inc()


def count_audit_rows_lost(rows: int) -> None:
    AUDIT_ROWS_LOST.inc(rows)


# ------------------------------------------------------------------------------------ per request


def _started() -> None:
    g.lbp_metrics_started = time.perf_counter()


def _finished(response: Response) -> Response:
    started = g.pop("lbp_metrics_started", None)  # None when an earlier before_request refused the call (401)
    if request.method != "POST" or request.endpoint not in _METERED_ENDPOINTS:
        return response
    service, hook = _service_labels((request.view_args or {}).get("service_id"))
    hook = _METERED_ENDPOINTS[request.endpoint] or hook or "unknown"
    REQUESTS.labels(service, hook, str(response.status_code)).inc()
    if started is not None:
        REQUEST_LATENCY.labels(service, hook).observe(time.perf_counter() - started)
    return response


# ------------------------------------------------------------------------------------ GET /metrics

bp = Blueprint("metrics", __name__)


def _registry():
    if os.environ.get(MULTIPROCESS_DIR_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # every worker's files, read at each scrape
        return registry
    return REGISTRY


def _bearer_matches(expected: str) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), expected.encode())


@bp.get("/metrics")
def scrape():
    if not _bearer_matches(current_app.config["LBP_SETTINGS"].admin_token):
        log.warning("GET /metrics refused: missing or wrong bearer token")
        response = jsonify({"error": {"status": 401, "code": "unauthorized",
                                      "message": "GET /metrics needs the admin token as a bearer token"}})
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return Response(generate_latest(_registry()), mimetype=CONTENT_TYPE_LATEST)


def init_app(app: Flask) -> None:
    """Count hook and feedback calls; serve /metrics only when an admin token is configured."""
    app.before_request(_started)
    app.after_request(_finished)
    if app.config["LBP_SETTINGS"].admin_token:
        app.register_blueprint(bp)
    else:
        log.info("metrics endpoint /metrics is off: no admin token configured (admin_token, LBP_ADMIN_TOKEN)")
