"""One JSON error shape for every failure the service reports.

Body: {"error": {"status": 400, "code": "invalid-request", "message": "...", "details": [{"field", "reason"}]}}
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field

from flask import Flask, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

# The service's status table (documented in the README).
STATUS_CODES = {
    400: "invalid-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    412: "precondition-failed",
    413: "payload-too-large",
    415: "unsupported-media-type",
    429: "too-many-requests",
    500: "internal-error",
    503: "service-unavailable",
}


def status_code_name(status: int) -> str:
    """The error code of a status; a status outside the table is a client or a server error all the same."""
    return STATUS_CODES.get(status) or ("invalid-request" if status < 500 else "internal-error")


@dataclass
class ServiceError(Exception):
    status: int
    message: str
    details: list[dict] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # WWW-Authenticate on 401, Retry-After on 429

    def body(self) -> dict:
        error = {"status": self.status, "code": status_code_name(self.status), "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"error": error}


def body_too_large(limit: int) -> ServiceError:
    return ServiceError(413, f"request body is larger than {limit} bytes; the limit is max_content_length "
                             "(LBP_MAX_CONTENT_LENGTH)",
                        [{"field": "body", "reason": f"max_content_length = {limit}"}])


def _respond(err: ServiceError):
    response = jsonify(err.body())
    response.status_code = err.status
    response.headers.update(err.headers)
    return response


log = logging.getLogger("lbp_redflags.errors")


def _log(status: int, code: str, fields: list[str]) -> None:
    """Status, code, the fields named and the hookInstance: never the reasons (they may echo values)."""
    log.warning("%s %s status=%d code=%s fields=%s hookInstance=%s", request.method, request.path, status, code,
                ",".join(fields) or "-", g.get("hook_instance"))


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def _service_error(err: ServiceError):
        _log(err.status, status_code_name(err.status), [d.get("field", "") for d in err.details])
        return _respond(err)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        status = err.code or 500
        if status == 413:
            error = body_too_large(current_app.config.get("MAX_CONTENT_LENGTH"))
        else:
            messages = {
                404: f"no such endpoint: {request.path}",
                405: f"method {request.method} is not allowed on {request.path}",
            }
            error = ServiceError(status, messages.get(status, err.description or err.name))
        _log(status, status_code_name(status), [d["field"] for d in error.details])
        response = _respond(error)
        if status == 405 and getattr(err, "valid_methods", None):
            response.headers["Allow"] = ", ".join(err.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        # The frames, not the message: an exception's message may carry patient data.
        log.error("unexpected error (hookInstance=%s): %s\n%s", g.get("hook_instance"), type(err).__name__,
                  "".join(traceback.format_tb(err.__traceback__)))
        return _respond(ServiceError(500, "internal error; the service logged it"))
