"""Blueprint: /healthz (the process answers) and /readyz (it can serve). Public, so they say nothing else.

Why a check failed goes to the log, never to the caller.
"""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, jsonify

from .errors import ServiceError
from .settings import startup_problems

bp = Blueprint("health", __name__)
log = logging.getLogger("lbp_redflags.health")


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    failed = []
    settings, store = current_app.config["LBP_SETTINGS"], current_app.extensions["lbp_store"]
    if startup_problems(settings):
        failed.append("configuration (see the start-up message)")
    ready, why = store.ready()  # audit rows can be written: the database answers, its schema is current
    if not ready and settings.migrate_on_start and store.behind:  # the database was down at start-up
        from .app import prepare_schema

        prepare_schema(store, settings)
        ready, why = store.ready()
    if not ready:
        failed.append(why)
    if failed:
        log.warning("not ready: %s", "; ".join(failed))
        raise ServiceError(503, "not ready")
    return jsonify({"status": "ok"})
