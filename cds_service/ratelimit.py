"""Per-client rate limit on hook and feedback calls (``rate_limit_per_minute``; 0 = off).

A client is the authenticated CDS client's issuer, else the remote address. Counts live in the
worker process (a moving window from the ``limits`` package): a deployment's effective limit is the
setting times its worker and replica count. Over the limit: 429 with ``Retry-After``.
"""

from __future__ import annotations

import math
import os
import time

from flask import Flask, current_app, g, request
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from .errors import ServiceError

LIMITED_BLUEPRINTS = ("hooks", "feedback")  # discovery, health and the API document are not counted


class ClientRateLimit:
    def __init__(self, per_minute: int):
        self.item = RateLimitItemPerMinute(per_minute)
        self._pid: int | None = None
        self._limiter: MovingWindowRateLimiter | None = None

    def limiter(self) -> MovingWindowRateLimiter:
        # Created in the worker that counts, not in the gunicorn master that forked it.
        if self._pid != os.getpid():
            self._limiter = MovingWindowRateLimiter(MemoryStorage())
            self._pid = os.getpid()
        return self._limiter

    def check(self, client_key: str) -> None:
        limiter = self.limiter()
        if limiter.hit(self.item, client_key):
            return
        reset_at = limiter.get_window_stats(self.item, client_key).reset_time
        retry_after = max(1, math.ceil(reset_at - time.time()))
        raise ServiceError(429, f"more than {self.item.amount} calls in a minute from this client; the limit is "
                                "rate_limit_per_minute (LBP_RATE_LIMIT_PER_MINUTE), counted per worker process",
                           [{"field": "rate_limit_per_minute", "reason": f"retry after {retry_after} s"}],
                           headers={"Retry-After": str(retry_after)})


def client_key() -> str:
    """The authenticated client's issuer, else the caller's address."""
    client = g.get("cds_client")
    issuer = getattr(client, "issuer", None)
    return f"iss:{issuer}" if issuer else f"addr:{request.remote_addr}"


def _enforce() -> None:
    if request.method == "POST":
        current_app.extensions["lbp_rate_limit"].check(client_key())


def init_app(app: Flask, per_minute: int) -> None:
    """Count POSTs to the hook and feedback blueprints, after the app-wide checks (authentication) ran."""
    if per_minute <= 0:
        return
    app.extensions["lbp_rate_limit"] = ClientRateLimit(per_minute)
    for blueprint in LIMITED_BLUEPRINTS:
        # Blueprint-scoped: Flask runs the app-wide before_request functions (authentication) first.
        app.before_request_funcs.setdefault(blueprint, []).append(_enforce)
