"""A loopback HTTP proxy in front of the test FHIR server whose misbehaviour a test switches on.

    proxy = FaultProxy(fhir_server.base_url).start()
    proxy.status(r"/Patient/", 401)                      # every matching request gets a 401
    proxy.retry_after(r"/Condition", seconds=1, times=1)  # one 503 + Retry-After, then pass-through
    client.fetch_all(proxy.base_url, ...)
    proxy.requests[0].headers.get("Authorization")
    proxy.stop()

Rules match a regular expression searched in the request target (path and query string, e.g.
`/fhir/R4/Observation?patient=p1&_count=10`). The newest matching rule that still has uses left
wins; a request that matches no rule is passed through to the upstream server unchanged, Host
header included, so the upstream's paging links point back at the proxy.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from requests.structures import CaseInsensitiveDict

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "content-length",
}
FHIR_JSON = "application/fhir+json; charset=utf-8"


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    target: str                     # path and query string as received
    headers: CaseInsensitiveDict
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


# A rule action gets the proxy and the request, and returns a Reply, or None to pass through.
Action = Callable[["FaultProxy", RecordedRequest], Reply | None]


@dataclass
class _Rule:
    pattern: re.Pattern
    action: Action
    times: int | None               # None: every time

    def take(self, target: str) -> bool:
        if self.times == 0 or not self.pattern.search(target):
            return False
        if self.times is not None:
            self.times -= 1
        return True


def operation_outcome_body(diagnostics: str, code: str = "processing", severity: str = "error") -> bytes:
    return json.dumps({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }).encode()


class FaultProxy:
    def __init__(self, upstream_base_url: str, host: str = "127.0.0.1", upstream_timeout: float = 30.0):
        parts = urlsplit(upstream_base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("the fault proxy forwards to a plain http:// upstream")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.base_path = parts.path or "/"
        self.upstream_timeout = upstream_timeout
        self._host = host
        self._rules: list[_Rule] = []
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        server = ThreadingHTTPServer((self._host, 0), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        assert self._server is not None, "start() the proxy first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        """The upstream's base URL as seen through the proxy (e.g. http://127.0.0.1:PORT/fhir/R4/)."""
        return self.origin + self.base_path

    # ------------------------------------------------------------------ what was received

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, pattern: str) -> list[RecordedRequest]:
        regex = re.compile(pattern)
        return [r for r in self.requests if regex.search(r.target)]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # ------------------------------------------------------------------ behaviours

    def add_rule(self, pattern: str, action: Action, times: int | None = None) -> None:
        with self._lock:
            self._rules.insert(0, _Rule(re.compile(pattern), action, times))

    def reset(self) -> None:
        """Drop every rule: all requests pass through again."""
        with self._lock:
            self._rules.clear()

    def passthrough(self, pattern: str, times: int | None = None) -> None:
        self.add_rule(pattern, lambda proxy, request: None, times)

    def respond(self, pattern: str, status: int, body: bytes | str | dict = b"", *,
                content_type: str = FHIR_JSON, headers: dict[str, str] | None = None,
                times: int | None = None) -> None:
        """Answer matching requests with a fixed reply instead of asking the upstream."""
        if isinstance(body, dict):
            body = json.dumps(body)
        payload = body.encode() if isinstance(body, str) else body
        reply_headers = {"Content-Type": content_type, **(headers or {})}
        self.add_rule(pattern, lambda proxy, request: Reply(status, payload, dict(reply_headers)), times)

    def status(self, pattern: str, status: int, *, times: int | None = None) -> None:
        """A bare error status (401, 403, 500, ...) with a short plain-text body."""
        reason = http.client.responses.get(status, "Error")
        self.respond(pattern, status, f"{status} {reason}", content_type="text/plain; charset=utf-8",
                     times=times)

    def retry_after(self, pattern: str, seconds: int | float, *, times: int = 1, status: int = 503) -> None:
        """`times` replies of `status` with Retry-After: seconds, then pass-through again."""
        self.respond(pattern, status, operation_outcome_body("Service temporarily unavailable", "transient"),
                     headers={"Retry-After": str(seconds)}, times=times)

    def operation_outcome(self, pattern: str, diagnostics: str, *, status: int = 200,
                          code: str = "processing", times: int | None = None) -> None:
        self.respond(pattern, status, operation_outcome_body(diagnostics, code), times=times)

    def malformed(self, pattern: str, body: bytes = b'{"resourceType": "Bundle", "entry": [',
                  *, status: int = 200, content_type: str = FHIR_JSON, times: int | None = None) -> None:
        """A body that is not what the content type promises (truncated JSON by default)."""
        self.respond(pattern, status, body, content_type=content_type, times=times)

    def delay(self, pattern: str, seconds: float, *, times: int | None = None) -> None:
        """Hold matching requests for `seconds` (or until the proxy stops), then pass them through."""
        def action(proxy: FaultProxy, request: RecordedRequest) -> Reply | None:
            proxy._stopping.wait(seconds)
            return None
        self.add_rule(pattern, action, times)

    def rewrite(self, pattern: str, old: str, new: str, *, times: int | None = None) -> None:
        """Pass through, replacing the text `old` by `new` in the upstream's response body."""
        def action(proxy: FaultProxy, request: RecordedRequest) -> Reply:
            reply = proxy.forward(request)
            reply.body = reply.body.replace(old.encode(), new.encode())
            return reply
        self.add_rule(pattern, action, times)

    # ------------------------------------------------------------------ plumbing

    def _record(self, request: RecordedRequest) -> Action | None:
        with self._lock:
            self._requests.append(request)
            for rule in self._rules:
                if rule.take(request.target):
                    return rule.action
        return None

    def forward(self, request: RecordedRequest) -> Reply:
        connection = http.client.HTTPConnection(self.upstream_host, self.upstream_port,
                                                timeout=self.upstream_timeout)
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["Content-Length"] = str(len(request.body))
            connection.request(request.method, request.target, body=request.body or None, headers=headers)
            response = connection.getresponse()
            body = response.read()
            reply_headers = {k: v for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP}
            return Reply(response.status, body, reply_headers)
        finally:
            connection.close()


class _ProxyHandler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = RecordedRequest(self.command, self.path, CaseInsensitiveDict(self.headers.items()), body)
        proxy = self.owner
        action = proxy._record(request)
        try:
            reply = action(proxy, request) if action else None
            if proxy._stopping.is_set():
                self.close_connection = True
                return
            if reply is None:
                reply = proxy.forward(request)
        except OSError as exc:
            reply = Reply(502, operation_outcome_body(f"fault proxy: upstream failed: {exc}", "transient"),
                          {"Content-Type": FHIR_JSON})
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                if name.lower() not in {"date", "server"}:  # send_response() writes its own
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)
        except OSError:
            self.close_connection = True  # the client gave up (e.g. its read timeout fired)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle
