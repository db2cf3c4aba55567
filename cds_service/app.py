"""Flask application factory."""

from __future__ import annotations

import logging

from flask import Flask
from flask_cors import CORS

from . import auth
from .errors import register_error_handlers
from .fhir_client import FhirClient
from .settings import Settings, load_settings
from .store import Store


def configure_logging(level: str) -> None:
    """One stderr handler for the service's own loggers (gunicorn adds none for them).

    Log records carry service ids, hookInstance, resource types, statuses and timings only:
    never tokens, query strings or patient identifiers.
    """
    logger = logging.getLogger("lbp_redflags")
    logger.setLevel(level.upper())
    if not any(getattr(h, "_lbp", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        handler._lbp = True
        logger.addHandler(handler)


def warm_up() -> None:
    """Load value sets, knowledge and the UCUM registry at start-up, not on a clinician's first call."""
    from cards.assess import knowledge
    from fhir_mappings.terminology import all_value_sets, value_set
    from fhir_mappings.units import convert

    for name in all_value_sets():
        value_set(name)
    knowledge()
    convert(1.0, "g/dL", "g/L")


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
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
    app.extensions["lbp_store"] = Store(settings.database_url, settings.patient_key)
    auth.init_app(app, settings, app.extensions["lbp_store"])  # first before_request: who is calling

    from . import feedback, health, hooks, openapi, ratelimit

    app.register_blueprint(hooks.bp)
    app.register_blueprint(feedback.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    ratelimit.init_app(app, settings.rate_limit_per_minute)
    register_error_handlers(app)
    return app
