"""Blueprint: POST /cds-services/<id>/feedback (CDS Hooks 2.0 feedback)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from flask import Blueprint, current_app, g, jsonify
from sqlalchemy.exc import SQLAlchemyError

from .errors import ServiceError
from .hooks import read_json_body, service_or_404
from .store import UnknownCards
from .validation import problems

bp = Blueprint("feedback", __name__)
log = logging.getLogger("lbp_redflags.feedback")


@bp.post("/cds-services/<service_id>/feedback")
def give_feedback(service_id: str):
    service = service_or_404(service_id)
    body = read_json_body()
    found = problems("feedback", body)
    if not found:
        latest = datetime.now(UTC) + timedelta(days=1)  # clock skew allowed; a later time is an error
        for index, item in enumerate(body["feedback"]):
            try:
                when = datetime.fromisoformat(item["outcomeTimestamp"].replace("Z", "+00:00"))
            except ValueError:
                found.append({"field": f"feedback.{index}.outcomeTimestamp", "reason": "not an ISO 8601 date-time"})
                continue
            if (when if when.tzinfo else when.replace(tzinfo=UTC)) > latest:
                found.append({"field": f"feedback.{index}.outcomeTimestamp", "reason": "is in the future"})
    if found:
        raise ServiceError(400, "the request is not valid CDS Hooks 2.0 feedback", found)
    issuer = getattr(g.get("cds_client"), "issuer", None)
    try:
        stored, repeated = current_app.extensions["lbp_store"].record_feedback(service.id, body["feedback"], issuer)
    except UnknownCards as exc:
        raise ServiceError(404, "unknown card: no card with this uuid was shown by this service to this client; "
                                "no feedback in this request was stored",
                           [{"field": "feedback.card", "reason": f"unknown card {u}"} for u in exc.uuids]) from None
    except SQLAlchemyError as exc:
        log.error("feedback not stored (database unavailable): %s", exc.__class__.__name__)
        raise ServiceError(503, "feedback could not be stored now (database unavailable); nothing in this "
                                "request was stored: send it again later") from None
    # The same item (card, outcome, outcomeTimestamp) sent again is stored once.
    return jsonify({"stored": stored, "alreadyStored": repeated})
