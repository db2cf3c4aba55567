"""Blueprint: /healthz (the process answers) and /readyz (it can serve). Public, so they say nothing else.

Why a check failed goes to the log, never to the caller.
"""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, jsonify
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

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
    if startup_problems(current_app.config["LBP_SETTINGS"]):
        failed.append("configuration (see the start-up message)")
    try:
        with current_app.extensions["lbp_store"].engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        failed.append(f"database unreachable ({type(exc).__name__})")
    if failed:
        log.warning("not ready: %s", "; ".join(failed))
        raise ServiceError(503, "not ready")
    return jsonify({"status": "ok"})
