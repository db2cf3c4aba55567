"""Parallel, bounded, retried FHIR reads for the prefetch keys a CDS client did not send.

    client = FhirClient(settings)
    results = client.fetch_all("https://ehr.example/fhir", {"patient": "Patient/123",
                                                            "conditions": "Condition?patient=123"}, token)
    results["conditions"].ok, results["conditions"].resource   # one searchset Bundle, all pages merged

`fetch_all` never raises for anything the server or the network does: every key comes back as a
`FetchResult`, failed ones with a short reason ("unreachable", "timed out", "HTTP 401", "malformed
response", the OperationOutcome's diagnostics) that names no patient and never the token.

Bounds, all from `Settings`:
- each HTTP request: (fhir_connect_timeout, fhir_read_timeout), shortened to the time left;
- the whole call: fhir_total_timeout. A key not finished by then is failed with "timed out" and
  the call returns; the worker still running stops at its next request or retry.
- searches follow Bundle.link[next] up to fhir_page_cap pages, and only while the link stays on
  the server of base_url (same scheme, host and port); otherwise the result is `truncated`.
- 429, 503 and connection failures are retried at most fhir_max_retries times.
- every request goes through `cds_service.outbound`: the caller's `OutboundPolicy` decides which
  servers may be called (the base URL, each page, each redirect target — redirects are never
  followed), connections go only to addresses that policy checked, and a page is capped at
  MAX_BODY_BYTES.

Retries use tenacity rather than urllib3's `Retry` on the adapter. The wait before a retry must be
capped by the time left in *this* call (Retry-After can say minutes; the caller gives us seconds),
and an adapter-level `Retry` is shared configuration that cannot see a per-call deadline: it would
sleep the full Retry-After (up to its static `retry_after_max`) inside urllib3. A per-request
`tenacity.Retrying` gets the deadline, reads Retry-After (seconds or HTTP-date) itself, waits at
most the time left, and gives up at once when not even that is left. The adapter's own retries are
therefore off (`max_retries=0`), so nothing retries twice.

Logging names the prefetch key, the resource type, the HTTP status, elapsed milliseconds and the
page count. It never logs the token, a URL, a query string or a resource id: those carry patient
identifiers; urllib3's own DEBUG lines print the path and query, so those are cut off by a filter.
"""

from __future__ import annotations

import email.utils
import json
import logging
import re
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urljoin, urlsplit

import requests
import tenacity
import urllib3

from cds_service import outbound
from cds_service.outbound import OutboundPolicy, OutboundRefused
from cds_service.settings import Settings

log = logging.getLogger("lbp_redflags.fhir_client")

FHIR_JSON = "application/fhir+json"
RETRY_STATUSES = frozenset({429, 503})
BACKOFF_BASE = 0.25            # seconds before the first retry without Retry-After; doubles each time
BACKOFF_MAX = 4.0
MIN_ATTEMPT_TIME = 0.05        # no retry when less than this would be left for the next attempt
MAX_DIAGNOSTICS = 300
MAX_BODY_BYTES = 64 * 1024 * 1024  # one FHIR response page
_RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_CONTROL_PARAMS = frozenset({"_count", "_offset", "_sort", "_total", "_summary", "_elements", "_format",
                             "_include", "_revinclude", "_getpagesoffset"})
_REFERENCE = re.compile(r"\b([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})")


@dataclass
class FetchResult:
    key: str
    ok: bool
    resource: dict | None = None   # the resource, or one searchset Bundle with every page's entries merged
    error: str | None = None       # human-readable, never the token or patient identifiers
    status: int | None = None      # HTTP status when there was one (the last response's)
    truncated: bool = False        # a search had more pages than were followed (page cap or foreign link)
    pages: int = 0                 # pages (responses with a resource) read for this key
    elapsed_ms: int = 0


class _Failure(Exception):
    """One key failed; `reason` is safe to show on the card, `logged` (no server-supplied text: an
    OperationOutcome may name the patient) to log."""

    def __init__(self, reason: str, status: int | None = None, logged: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.logged = logged or reason


class _OutOfTime(Exception):
    pass


class _RedactUrls(logging.Filter):
    """urllib3 logs request paths and query strings (patient identifiers) at DEBUG: cut them off."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_cut_url(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True


def _cut_url(text: str) -> str:
    if text.startswith("/"):
        return "/…"
    if "://" in text:
        parts = urlsplit(text)
        if parts.netloc:
            return f"{parts.scheme}://{parts.netloc}/…"
    return text


_URLLIB3_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry", "urllib3.poolmanager")
_url_filter = _RedactUrls()
_url_filter_lock = threading.Lock()


def _install_url_filter() -> None:
    with _url_filter_lock:
        for name in _URLLIB3_LOGGERS:
            logger = logging.getLogger(name)
            if _url_filter not in logger.filters:
                logger.addFilter(_url_filter)


# ---------------------------------------------------------------------------- same server


def under_base(url: str, base_url: str) -> bool:
    """url is on base_url's server and under its path (a page of a search on that server)."""
    if not _same_server(url, base_url):
        return False
    base_path = urlsplit(base_url).path.rstrip("/")
    path = urlsplit(url).path
    return path == base_path or path.startswith(base_path + "/")


def _same_server(url: str, base_url: str) -> bool:
    a, b = urlsplit(url), urlsplit(base_url)
    try:
        a_port = a.port or (443 if a.scheme.lower() == "https" else 80)
        b_port = b.port or (443 if b.scheme.lower() == "https" else 80)
    except ValueError:
        return False
    return (a.scheme.lower(), (a.hostname or "").lower(), a_port) == (
        b.scheme.lower(), (b.hostname or "").lower(), b_port)


# ---------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class _Query:
    resource_type: str   # for logs: a resource type name, or "?"
    url: str
    is_search: bool


def _prepare(base_url: str, relative: str, page_size: int) -> _Query:
    relative = (relative or "").strip()
    try:
        parts = urlsplit(relative)
    except ValueError:
        parts = None
    if parts is not None and parts.scheme and under_base(relative, base_url):
        # A next-page link of a prefetched search (server-made, e.g. HAPI's "?_getpages=..."): same server
        # and under the base path, so the token stays where it belongs.
        rest = parts.path[len(urlsplit(base_url).path.rstrip("/")):].lstrip("/")
        first = rest.split("/", 1)[0]
        return _Query(first if _RESOURCE_TYPE.match(first) else "?", relative, True)
    path, question_mark, query = relative.lstrip("/").partition("?")
    segments = [s for s in path.split("/") if s]
    if (parts is None or parts.scheme or parts.netloc or relative.startswith("//") or not segments
            or any(unquote(s) in (".", "..") for s in segments)):
        # Never let a query leave base_url (an absolute URL would take the token with it).
        raise _Failure("invalid query: expected a relative FHIR query such as 'Condition?patient=...'")
    resource_type = segments[0] if _RESOURCE_TYPE.match(segments[0]) else "?"
    is_search = bool(question_mark) or len(segments) % 2 == 1
    if is_search and not any(name == "_count" for name, _v in parse_qsl(query, keep_blank_values=True)):
        query = f"{query}&_count={page_size}" if query else f"_count={page_size}"
    url = base_url.rstrip("/") + "/" + path + (f"?{query}" if query else "")
    return _Query(resource_type, url, is_search)


def _redact(text: str, query: str) -> str:
    """Remove what looks like a patient identifier from server-supplied text."""
    text = _REFERENCE.sub(lambda m: f"{m[1]}/…", text)
    path, _, qs = query.partition("?")
    values = [unquote(s) for s in path.split("/")[1:] if s]
    values += [v for name, v in parse_qsl(qs, keep_blank_values=False) if name not in _CONTROL_PARAMS]
    for value in sorted({v for v in values if len(v) >= 2}, key=len, reverse=True):
        text = re.sub(rf"(?<![\w-]){re.escape(value)}(?![\w-])", "…", text)
    return text


def _outcome_summary(outcome: dict, query: str) -> str:
    parts: list[str] = []
    for issue in outcome.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or issue.get("code")
        if isinstance(text, str) and text.strip() and text.strip() not in parts:
            parts.append(text.strip())
    summary = _redact("; ".join(parts), query) or "no diagnostics"
    return summary if len(summary) <= MAX_DIAGNOSTICS else summary[: MAX_DIAGNOSTICS - 1] + "…"


# ---------------------------------------------------------------------------- retries


def _retry_after_seconds(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _is_read_timeout(exc: BaseException) -> bool:
    # requests raises ConnectionError(ReadTimeoutError) when the body, not the headers, times out.
    return isinstance(exc, requests.ReadTimeout) or (
        isinstance(exc, requests.ConnectionError) and bool(exc.args)
        and isinstance(exc.args[0], urllib3.exceptions.ReadTimeoutError))


def _is_retryable_error(exc: BaseException) -> bool:
    # Refused, reset, DNS failure, connect timeout. Every request here is a GET, so idempotent.
    return isinstance(exc, requests.ConnectionError) and not _is_read_timeout(exc)


def _is_retryable_response(response: requests.Response) -> bool:
    return response.status_code in RETRY_STATUSES


def _desired_wait(state: tenacity.RetryCallState) -> float:
    outcome = state.outcome
    if outcome is not None and not outcome.failed:
        retry_after = _retry_after_seconds(outcome.result())
        if retry_after is not None:
            return retry_after
    return min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (state.attempt_number - 1))


# ---------------------------------------------------------------------------- the client


class FhirClient:
    def __init__(self, settings: Settings):
        self.settings = settings
        # One guarded, pooled session per outbound policy (one per configured client, plus the policy of
        # fhir_allowed_servers): connections are pinned to addresses that policy checked.
        self._sessions: dict[OutboundPolicy, requests.Session] = {}
        self._sessions_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=settings.fhir_max_workers,
                                            thread_name_prefix="fhir-fetch")
        _install_url_filter()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._sessions_lock:
            for session in self._sessions.values():
                session.close()
            self._sessions.clear()

    def _session(self, policy: OutboundPolicy) -> requests.Session:
        with self._sessions_lock:
            if policy not in self._sessions:
                # Retries are done per request with tenacity (see module docstring): none in the adapter.
                self._sessions[policy] = outbound.session(policy, pool_size=max(10, self.settings.fhir_max_workers))
            return self._sessions[policy]

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ public

    def fetch_all(self, base_url: str, queries: dict[str, str], token: str | None, *,
                  policy: OutboundPolicy | None = None) -> dict[str, FetchResult]:
        """Fetch every query in parallel; one FetchResult per key, within fhir_total_timeout.

        policy: which servers may be called (`outbound.policy_for` the calling client); by default
        that of these settings without a client. A base_url the policy refuses is not contacted:
        every key fails with "FHIR server not allowed". Every request, paging links included, goes
        through the same guard, and connects only to addresses it checked.
        """
        started = time.monotonic()
        deadline = started + self.settings.fhir_total_timeout
        policy = policy or outbound.policy_for(self.settings, None)
        try:
            policy.check_url(base_url or "", base=True)
        except OutboundRefused as refused:
            log.warning("FHIR fetch refused: %s (%d keys)", ",".join(refused.kinds), len(queries))
            return {key: FetchResult(key=key, ok=False, error="FHIR server not allowed") for key in queries}
        session = self._session(policy)
        headers = {"Accept": FHIR_JSON}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        futures: dict[Future, str] = {}
        for key, query in queries.items():
            try:
                futures[self._executor.submit(self._fetch_one, session, policy, base_url, key, query, headers,
                                              deadline)] = key
            except RuntimeError:  # executor shut down
                futures[_failed_future(key, "client closed")] = key
        results: dict[str, FetchResult] = {}
        pending = set(futures)
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            done, pending = wait(pending, timeout=remaining, return_when=FIRST_COMPLETED)
            for future in done:
                results[futures[future]] = future.result()
        for future in pending:
            future.cancel()
            key = futures[future]
            elapsed = int((time.monotonic() - started) * 1000)
            results[key] = FetchResult(key=key, ok=False, error="timed out", elapsed_ms=elapsed)
            log.warning("FHIR fetch key=%s type=%s outcome=timed-out elapsed_ms=%d", key,
                        _log_type(queries[key]), elapsed)
        return {key: results[key] for key in queries}

    # ------------------------------------------------------------------ one key

    def _fetch_one(self, session: requests.Session, policy: OutboundPolicy, base_url: str, key: str,
                   relative: str, headers: dict[str, str], deadline: float) -> FetchResult:
        started = time.monotonic()
        resource_type = _log_type(relative)
        result = FetchResult(key=key, ok=False)
        logged = None
        try:
            query = _prepare(base_url, relative, self.settings.fhir_page_size)
            if query.is_search:
                self._search(session, policy, query, base_url, key, relative, headers, deadline, result)
            else:
                result.resource, result.status = self._read(session, query.url, key, relative, headers, deadline)
                result.pages = 1
                if result.resource.get("resourceType") != query.resource_type:
                    raise _Failure("malformed response (unexpected resource type "
                                   f"{_safe_type(result.resource)})", result.status)
            result.ok = True
        except _Failure as failure:
            result.ok, result.resource = False, None
            result.error, result.status = failure.reason, failure.status or result.status
            logged = failure.logged
        except _OutOfTime:
            result.ok, result.resource, result.error = False, None, "timed out"
        except Exception as exc:  # never let one key break the others; say what kind, not the URL
            result.ok, result.resource = False, None
            result.error = f"request failed ({type(exc).__name__})"
            # No traceback: exception messages can carry the URL, and with it patient identifiers.
            log.error("FHIR fetch key=%s type=%s failed unexpectedly: %s", key, resource_type,
                      type(exc).__name__)
        result.elapsed_ms = int((time.monotonic() - started) * 1000)
        log.log(
            logging.INFO if result.ok else logging.WARNING,
            "FHIR fetch key=%s type=%s status=%s pages=%d truncated=%s elapsed_ms=%d outcome=%s",
            key, resource_type, result.status, result.pages, result.truncated, result.elapsed_ms,
            "ok" if result.ok else logged or result.error,
        )
        return result

    def _search(self, session: requests.Session, policy: OutboundPolicy, query: _Query, base_url: str, key: str,
                relative: str, headers: dict[str, str], deadline: float, result: FetchResult) -> None:
        url: str | None = query.url
        seen: set[str] = set()
        merged: dict[str, Any] | None = None
        entries: list[dict] = []
        entry_ids: set[tuple[str, str]] = set()
        while url is not None:
            if result.pages >= self.settings.fhir_page_cap:
                result.truncated = True
                log.info("FHIR fetch key=%s: page cap %d reached", key, self.settings.fhir_page_cap)
                break
            seen.add(url)
            try:
                page, result.status = self._read(session, url, key, relative, headers, deadline)
            except _Failure as failure:
                if result.pages:
                    failure.reason = f"page {result.pages + 1}: {failure.reason}"
                raise
            if page.get("resourceType") != "Bundle":
                raise _Failure(f"malformed response (expected a Bundle, got {_safe_type(page)})",
                               result.status)
            if not isinstance(page.get("entry", []), list):
                raise _Failure("malformed response (Bundle.entry is not a list)", result.status)
            result.pages += 1
            if merged is None:
                merged = {k: v for k, v in page.items() if k not in ("entry", "link")}
                merged["type"] = "searchset"
            for entry in page.get("entry") or []:
                resource = entry.get("resource") if isinstance(entry, dict) else None
                resource = resource if isinstance(resource, dict) else None
                ident = (resource.get("resourceType"), resource.get("id")) if resource else None
                if ident and ident[1] is not None:
                    if ident in entry_ids:
                        continue
                    entry_ids.add(ident)
                entries.append(entry)
            url = self._next_link(page, url, base_url, policy, key, seen, result)
        assert merged is not None
        if entries:
            merged["entry"] = entries
        result.resource = merged

    @staticmethod
    def _next_link(page: dict, current: str, base_url: str, policy: OutboundPolicy, key: str, seen: set[str],
                   result: FetchResult) -> str | None:
        for link in page.get("link") or []:
            if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
                nxt = urljoin(current, link["url"].strip())
                if not _same_server(nxt, base_url) or not _permitted(policy, nxt):
                    result.truncated = True
                    log.warning("FHIR fetch key=%s: next link points to another server; not followed", key)
                    return None
                if nxt in seen:
                    result.truncated = True
                    log.warning("FHIR fetch key=%s: next link repeats an earlier page; stopped", key)
                    return None
                return nxt
        return None

    # ------------------------------------------------------------------ one request

    def _read(self, session: requests.Session, url: str, key: str, relative: str, headers: dict[str, str],
              deadline: float) -> tuple[dict, int]:
        """GET url (with retries) and return (resource, status), or raise _Failure / _OutOfTime."""
        def timeout() -> tuple[float, float]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _OutOfTime()
            return (min(self.settings.fhir_connect_timeout, left), min(self.settings.fhir_read_timeout, left))

        def wait_capped(state: tenacity.RetryCallState) -> float:
            return max(0.0, min(_desired_wait(state), deadline - time.monotonic()))

        def stop(state: tenacity.RetryCallState) -> bool:
            if state.attempt_number > self.settings.fhir_max_retries:
                return True
            # Give up when the wait (Retry-After or backoff) would leave no time for another attempt.
            return deadline - time.monotonic() - _desired_wait(state) < MIN_ATTEMPT_TIME

        def before_sleep(state: tenacity.RetryCallState) -> None:
            outcome = state.outcome
            if not outcome.failed:
                outcome.result().close()  # a streamed response being retried gives its connection back
            what = (type(outcome.exception()).__name__ if outcome.failed
                    else f"HTTP {outcome.result().status_code}")
            log.info("FHIR fetch key=%s type=%s: %s, retry %d in %.2f s", key, _log_type(relative), what,
                     state.attempt_number, state.next_action.sleep if state.next_action else 0.0)

        retrying = tenacity.Retrying(
            retry=(tenacity.retry_if_exception(_is_retryable_error)
                   | tenacity.retry_if_result(_is_retryable_response)),
            stop=stop,
            wait=wait_capped,
            before_sleep=before_sleep,
            # Out of retries: hand back the last response (or raise the last error) to be interpreted.
            retry_error_callback=lambda state: state.outcome.result(),
        )
        try:
            # Streamed, so the body is read against the deadline: a server that trickles bytes never
            # trips a per-read timeout, and must not hold a worker past the request's deadline.
            # Redirects are not followed: a redirect could lead to a server that is not allowed.
            response = retrying(lambda: session.get(url, headers=headers, timeout=timeout(), stream=True,
                                                    allow_redirects=False))
        except _OutOfTime:
            raise
        except OutboundRefused as refused:
            # The name resolved to an address the policy refuses (checked when connecting): nothing was sent.
            log.warning("FHIR fetch key=%s type=%s refused: %s", key, _log_type(relative), ",".join(refused.kinds))
            raise _Failure("FHIR server not allowed") from None
        except requests.RequestException as exc:
            raise _request_failure(exc) from None
        with response:
            try:
                body = outbound.read_limited(response, MAX_BODY_BYTES, deadline)
            except outbound.ResponseTooLarge:
                raise _Failure(f"malformed response (larger than {MAX_BODY_BYTES // (1024 * 1024)} MB)",
                               response.status_code) from None
            except outbound.ReadDeadlineExceeded:
                raise _OutOfTime() from None
            except requests.RequestException as exc:
                raise _request_failure(exc) from None
            except urllib3.exceptions.ReadTimeoutError:
                raise _OutOfTime() from None
            except urllib3.exceptions.HTTPError:
                raise _Failure("malformed response (connection broken)", response.status_code) from None
            return _interpret(response, body, relative)


def _permitted(policy: OutboundPolicy, url: str) -> bool:
    try:
        policy.check_url(url)
    except OutboundRefused:
        return False
    return True


def _request_failure(exc: requests.RequestException) -> Exception:
    """A safe description of a request that got no response (exception messages hold the URL)."""
    if _is_read_timeout(exc):
        return _OutOfTime()
    if isinstance(exc, requests.ConnectTimeout):
        return _Failure("unreachable (connection timed out)")
    if isinstance(exc, requests.ConnectionError):
        return _Failure("unreachable")
    if isinstance(exc, requests.TooManyRedirects):
        return _Failure("too many redirects")
    return _Failure(f"request failed ({type(exc).__name__})")


def _interpret(response: requests.Response, raw: bytes, relative: str) -> tuple[dict, int]:
    status = response.status_code
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        body = None
    is_resource = isinstance(body, dict) and isinstance(body.get("resourceType"), str) and bool(
        _RESOURCE_TYPE.match(body["resourceType"]))
    if is_resource and body["resourceType"] == "OperationOutcome":
        raise _Failure(f"HTTP {status} OperationOutcome: {_outcome_summary(body, relative)}", status,
                       logged=f"HTTP {status} OperationOutcome")
    if status in (401, 403):
        raise _Failure(f"HTTP {status} ({'not authorised' if status == 401 else 'forbidden'})", status)
    if not 200 <= status < 300:
        reason = "rate limited" if status == 429 else (response.reason or "error")
        raise _Failure(f"HTTP {status} ({_redact(str(reason)[:60], relative)})", status, logged=f"HTTP {status}")
    if not is_resource:
        raise _Failure("malformed response (not a FHIR resource)" if body is not None
                       else "malformed response (not JSON)", status)
    return body, status


def _safe_type(resource: Any) -> str:
    kind = resource.get("resourceType") if isinstance(resource, dict) else None
    return kind if isinstance(kind, str) and _RESOURCE_TYPE.match(kind) else "something else"


def _log_type(relative: str) -> str:
    first = (relative or "").lstrip("/").split("?", 1)[0].split("/", 1)[0]
    return first if _RESOURCE_TYPE.match(first) else "?"


def _failed_future(key: str, reason: str) -> Future:
    future: Future = Future()
    future.set_result(FetchResult(key=key, ok=False, error=reason))
    return future
