"""Flask application factory."""

from __future__ import annotations

import logging

from flask import Flask, g, has_request_context
from flask_cors import CORS
from pythonjsonlogger.json import JsonFormatter
from sqlalchemy.exc import SQLAlchemyError

from . import auth, metrics
from .errors import register_error_handlers
from .fhir_client import FhirClient
from .settings import Settings, SettingsError, load_settings
from .store import SchemaError, Store


class HookInstanceFilter(logging.Filter):
    """Adds the call's hookInstance (the correlation id an EHR can quote) to records logged during a call."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "hookInstance") and has_request_context() and g.get("hook_instance"):
            record.hookInstance = g.hook_instance
        return True


def json_formatter() -> logging.Formatter:
    """One JSON object per line: time, level, logger, message, pid, and hookInstance when there is one."""
    return JsonFormatter("{levelname}{name}{message}{process}", style="{", timestamp="time",
                         rename_fields={"levelname": "level", "name": "logger", "process": "pid"},
                         json_ensure_ascii=False)


def configure_logging(level: str) -> None:
    """One stderr handler, JSON lines, for the service's own loggers (gunicorn adds none for them).

    Log records carry service ids, hookInstance, resource types, statuses and timings only:
    never tokens, query strings, patient identifiers, names or note text.
    """
    logger = logging.getLogger("lbp_redflags")
    logger.setLevel(level.upper())
    if not any(getattr(h, "_lbp", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(json_formatter())
        handler.addFilter(HookInstanceFilter())
        handler._lbp = True
        logger.addHandler(handler)


def warm_up() -> None:
    """Load value sets, knowledge, the UCUM registry and the NLP pipeline at start-up, not on a
    clinician's first call."""
    from cards.assess import knowledge
    from fhir_mappings.terminology import all_value_sets, value_set
    from fhir_mappings.text import mentions
    from fhir_mappings.units import convert

    for name in all_value_sets():
        value_set(name)
    knowledge()
    convert(1.0, "g/dL", "g/L")
    mentions("Denies saddle anaesthesia; new urinary retention.")


def prepare_schema(store: Store, settings: Settings) -> None:
    """Migrate at start-up (migrate_on_start), else say what is missing; never fail: cards go out regardless."""
    log = logging.getLogger("lbp_redflags.store")
    try:
        if settings.migrate_on_start:
            applied = store.migrate()
            if applied:
                log.info("database migrated: %s", ", ".join(applied))
            return
        current, head = store.schema_status()
        if current != head:
            log.error("database schema at %s, the service needs %s: run `lbp-redflags migrate` "
                      "(audit rows are lost and /readyz fails until then)", current or "nothing", head)
    except SchemaError as exc:
        log.error("database not migrated: %s", exc)
    except SQLAlchemyError as exc:
        log.error("database unavailable at start-up (%s): cards are served, audit rows are lost and /readyz "
                  "fails until it answers", exc.__class__.__name__)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    from .switches import switch_problems

    if switch_problems(settings):  # never run with a switch that could hide an emergency
        raise SettingsError("; ".join(switch_problems(settings)))
    app = Flask(__name__)
    app.config.update(
        LBP_SETTINGS=settings,
        MAX_CONTENT_LENGTH=settings.max_content_length,
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False
    configure_logging(settings.log_level)

    # Browser clients (the CDS Hooks sandbox) preflight every call; the preflight needs no JWT.
    CORS(
        app,
        resources={r"/cds-services*": {"origins": list(settings.cors_origins)}},
        allow_headers=["Authorization", "Content-Type"],
        methods=["GET", "POST", "OPTIONS"],
        max_age=600,
    )
    warm_up()
    app.extensions["lbp_fhir_client"] = FhirClient(settings)
    store = app.extensions["lbp_store"] = Store(settings.database_url, settings.patient_key)
    prepare_schema(store, settings)
    auth.init_app(app, settings, store)  # first before_request: who is calling

    from . import dashboard, feedback, health, hooks, openapi, ratelimit

    app.register_blueprint(hooks.bp)
    app.register_blueprint(feedback.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    dashboard.register(app, settings)
    ratelimit.init_app(app, settings.rate_limit_per_minute)
    register_error_handlers(app)
    metrics.init_app(app)
    store.on_loss(lambda rows, _reason: metrics.count_audit_rows_lost(rows))
    return app
