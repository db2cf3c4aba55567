"""Optional FHIR terminology server: is a SNOMED CT code no value-set list names below a concept's roots?

The embedded lists (value sets and their published expansions) are the default and always apply.
When ``terminology_server`` is set, the SNOMED CT codes of a record that no list names are asked
about, in parallel and within ``terminology_timeout``: ``CodeSystem/$subsumes`` (root subsumes
code?), or ``ValueSet/$validate-code`` on the implicit ``isa`` value set when a server does not
offer $subsumes. The answers go to the clinical core as plain data
(``fhir_mappings.terminology.server_answers``); a code left unanswered (timeout, error) keeps the
guarded display fallback. Answers are cached; errors are not.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from functools import cache
from time import monotonic
from urllib.parse import urlsplit

import requests

from fhir_mappings.code_formats import well_formed
from fhir_mappings.terminology import SNOMED, all_value_sets, normalise_system, value_set

from . import outbound

log = logging.getLogger(__name__)

MAX_CODES = 200  # distinct unlisted SNOMED CT codes asked about per request
MAX_WORKERS = 8
MAX_DEPTH = 12
SUBSUMED = {"equivalent", "subsumes"}
NOT_SUBSUMED = {"subsumed-by", "not-subsumed"}
UNSUPPORTED = {404, 405, 501}  # the operation itself is not offered (not: this code is unknown)


class TerminologyServerError(ValueError):
    """A terminology server URL that cannot be used."""


def http_session(base_url: str, settings) -> requests.Session:
    """The one place the terminology client gets its HTTP session: through the outbound guard, with
    terminology_server as the only allowed prefix (plain http and private addresses as fhir.* allow)."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TerminologyServerError(f"terminology_server must be an http or https URL, not {base_url!r}")
    if parts.username or parts.password:
        raise TerminologyServerError("terminology_server must not carry credentials in the URL")
    policy = outbound.policy_for_urls(settings, [base_url], "terminology_server")
    try:
        policy.check_url(base_url)
    except outbound.OutboundRefused as refused:
        raise TerminologyServerError(f"terminology_server refused: {refused}") from None
    session = outbound.session(policy)
    session.headers.update({"Accept": "application/fhir+json"})
    return session


class TerminologyServer:
    """$subsumes / $validate-code against one server, with an LRU cache of answers."""

    def __init__(self, base_url: str, timeout: float, cache_size: int, session: requests.Session):
        self.base_url = base_url.rstrip("/")
        self.timeout = max(float(timeout), 0.05)
        self.cache_size = max(int(cache_size), 0)
        self.session = session
        self._cache: OrderedDict[tuple[str, str], bool] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="terminology")
        self._subsumes_supported = True

    def subsumes(self, ancestor: str, code: str, deadline: float) -> bool | None:
        """Is ``code`` the ``ancestor`` or one of its descendants? None when the server did not say."""
        key = (ancestor, code)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        ask = self._ask_subsumes if self._subsumes_supported else self._ask_validate_code
        answer = ask(ancestor, code, deadline)
        if answer is not None and self.cache_size:
            with self._lock:
                self._cache[key] = answer
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return answer

    def _get(self, path: str, params: dict, deadline: float) -> requests.Response | None:
        remaining = deadline - monotonic()
        if remaining <= 0:
            return None
        try:
            return self.session.get(f"{self.base_url}/{path}", params=params, timeout=(remaining, remaining),
                                    allow_redirects=False)
        except (requests.RequestException, outbound.OutboundError) as exc:
            log.warning("terminology server unreachable: %s", type(exc).__name__)
            return None

    def _ask_subsumes(self, ancestor: str, code: str, deadline: float) -> bool | None:
        response = self._get("CodeSystem/$subsumes", {"system": SNOMED, "codeA": ancestor, "codeB": code}, deadline)
        if response is None:
            return None
        if response.status_code in UNSUPPORTED and _parameter(response, "outcome") is None:
            self._subsumes_supported = False  # e.g. a server offering $validate-code only
            return self._ask_validate_code(ancestor, code, deadline)
        outcome = _parameter(response, "outcome") if response.ok else None
        if outcome in SUBSUMED:
            return True
        if outcome in NOT_SUBSUMED:
            return False
        return None

    def _ask_validate_code(self, ancestor: str, code: str, deadline: float) -> bool | None:
        response = self._get("ValueSet/$validate-code",
                             {"url": f"{SNOMED}?fhir_vs=isa/{ancestor}", "system": SNOMED, "code": code}, deadline)
        result = _parameter(response, "result") if response is not None and response.ok else None
        return result if isinstance(result, bool) else None

    def answers(self, codes: Iterable[str]) -> dict[tuple[str, str], bool]:
        """(value set id, code) -> member? for every value set with SNOMED CT roots and every code it
        does not list. A code is a member when a root subsumes it and no exclude-root does."""
        deadline = monotonic() + self.timeout
        codes = list(dict.fromkeys(codes))[:MAX_CODES]
        questions = [(vs, code) for vs in _hierarchical_value_sets() for code in codes
                     if not vs.lists(SNOMED, code)]
        pairs = sorted({(root, code) for vs, code in questions
                        for root in (*vs.snomed_roots, *vs.snomed_exclude_roots)})
        if not pairs:
            return {}
        futures = {pair: self._pool.submit(self.subsumes, *pair, deadline) for pair in pairs}
        wait(futures.values(), timeout=max(deadline - monotonic(), 0))
        known = {pair: f.result() for pair, f in futures.items() if f.done() and not f.exception()}
        for future in futures.values():
            future.cancel()
        out: dict[tuple[str, str], bool] = {}
        for vs, code in questions:
            excluded = [known.get((root, code)) for root in vs.snomed_exclude_roots]
            included = [known.get((root, code)) for root in vs.snomed_roots]
            if any(excluded):
                out[(vs.id, code)] = False
            elif any(included) and all(answer is False for answer in excluded):
                out[(vs.id, code)] = True
            elif all(answer is False for answer in included):
                out[(vs.id, code)] = False
        if len(out) < len(questions):
            log.warning("terminology server: %d of %d questions unanswered in time", len(questions) - len(out),
                        len(questions))
        return out


def _parameter(response: requests.Response, name: str):
    """The value[x] of a named parameter in a FHIR Parameters response, or None."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        return None
    for parameter in body.get("parameter") or ():
        if isinstance(parameter, dict) and parameter.get("name") == name:
            for key, value in parameter.items():
                if key.startswith("value"):
                    return value
    return None


@cache
def _hierarchical_value_sets() -> tuple:
    return tuple(vs for vs in map(value_set, all_value_sets()) if vs.snomed_roots)


def snomed_codes(resources: Iterable) -> list[str]:
    """The distinct, well-formed SNOMED CT codes anywhere in the resources (codings at any depth)."""
    found: dict[str, None] = {}

    def walk(node, depth: int) -> None:
        if depth > MAX_DEPTH or len(found) >= MAX_CODES:
            return
        if isinstance(node, dict):
            code = node.get("code")
            if isinstance(code, str) and normalise_system(node.get("system")) == SNOMED and well_formed(SNOMED, code):
                found[code] = None
            for value in node.values():
                if isinstance(value, dict | list):
                    walk(value, depth + 1)
        elif isinstance(node, list):
            for item in node:
                walk(item, depth + 1)

    walk(list(resources), 0)
    return list(found)


_servers: dict[tuple[str, float, int], TerminologyServer] = {}
_servers_lock = threading.Lock()


def server_for(settings) -> TerminologyServer | None:
    """The configured server (one per URL, timeout and cache size), or None when not configured."""
    url = (getattr(settings, "terminology_server", "") or "").strip()
    if not url:
        return None
    key = (url, float(settings.terminology_timeout), int(settings.terminology_cache_size))
    with _servers_lock:
        if key not in _servers:
            _servers[key] = TerminologyServer(url, key[1], key[2], http_session(url, settings))
        return _servers[key]


def lookups(settings, resources: Iterable) -> dict[tuple[str, str], bool]:
    """What the configured terminology server says about the record's unlisted SNOMED CT codes.

    {} when no server is configured, and whenever asking fails: the server is never required."""
    try:
        server = server_for(settings)
        return server.answers(snomed_codes(resources)) if server is not None else {}
    except TerminologyServerError as exc:
        log.error("terminology server not used: %s", exc)
    except Exception:  # an optional lookup must never fail a hook call
        log.exception("terminology server lookups failed; the embedded value sets decide")
    return {}
