"""The one guard every outbound HTTP call goes through (server-side request forgery defence).

A CDS client tells the service which FHIR server to call, and hands it a bearer token to call it
with. Without a guard, anyone who can reach the service can point it at an internal address
(the cloud metadata service at 169.254.169.254, an admin port on loopback) with a token in hand.
So every outbound request — FHIR searches and reads, their paging links, the JWK Sets of CDS
clients (`jwks_url`, `jku`), a terminology server — is checked here, twice:

1. **Before any connection** (`OutboundPolicy.check_url`): the URL is parsed (never compared as a
   string) into scheme, host, port and path, and must fall under one of the allowed prefixes by
   whole path segments: ``https://ehr.example.org/fhir`` allows ``…/fhir`` and ``…/fhir/r4``, not
   ``…/fhirx``, ``https://ehr.example.org.evil.com/fhir``, another port or another scheme. URLs
   with credentials, dot segments or a fragment never pass. Plain http passes only with
   ``allow_http``; an IP literal that is loopback, private, link-local or unique-local only with
   ``allow_private_networks``. A refused URL is refused without resolving or connecting.
2. **At connection time** (`session()`'s transport): the host name is resolved once, every answer
   is checked against the same rules, and the socket is connected to a checked address — the
   name is never resolved again between check and connect, so DNS rebinding cannot swap in an
   internal address. The Host header, TLS SNI and certificate verification still use the name.
   Proxies from the environment and ``.netrc`` credentials are ignored; redirects are not followed
   (a redirect is a response for the caller to report, not a new destination).

Which servers may be called (`policy_for`): with authentication on, those in the calling client's
``fhir_servers`` (prefixes only, no wildcards); with authentication off, ``fhir_allowed_servers``,
which also understands ``loopback`` (any port on 127.0.0.0/8, ::1, localhost) and ``*`` (any http
or https server). Either way subject to ``fhir.allow_http`` and ``fhir.allow_private_networks``.
Every refusal says which setting to change (`OutboundRefused.hint`).

Public API for other callers:

    policy = outbound.policy_for_urls(settings, [client.jwks_url], "auth.clients[].jwks_url")
    keys = outbound.get_json(client.jwks_url, policy, timeout=5.0, max_bytes=256 * 1024)

`get_json` raises `OutboundError` (and its subclass `OutboundRefused`) with a message that names no
URL; ``outbound.session(policy)`` gives a guarded `requests.Session` for callers that need more
(the FHIR client keeps one per policy). Response bodies are read with `read_limited`, which caps
their size and the time spent reading them.

The resolver is injectable (`OutboundPolicy.resolver`): ``resolver(host, port) -> [ip, …]``. Tests
inject one so that no test ever asks a real DNS server, or reaches a private address.
"""

from __future__ import annotations

import http.cookiejar
import ipaddress
import json
import os
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection

Resolver = Callable[[str, int], Sequence[str]]

DEFAULT_MAX_BYTES = 2 * 1024 * 1024  # get_json: a JWK Set or a terminology answer, not a patient's history
ALLOWED_SERVERS_SETTING = "fhir_allowed_servers (LBP_FHIR_ALLOWED_SERVERS)"
HTTP_HINT = "use https, or set fhir.allow_http = true (LBP_FHIR_ALLOW_HTTP) for local development and tests"
PRIVATE_HINT = ("set fhir.allow_private_networks = true (LBP_FHIR_ALLOW_PRIVATE_NETWORKS) if the server is "
                "meant to be on a loopback or private network")
INVALID_HINT = "give an http or https base URL without credentials, query, fragment or '.'/'..' segments"


# ---------------------------------------------------------------------------- errors


class OutboundError(Exception):
    """An outbound request that gave no usable answer; the message names no URL (it may hold ids)."""


class OutboundRefused(OutboundError):
    """The guard refused a URL or an address; nothing was sent.

    kinds: what is wrong, from "invalid", "http", "not-listed", "private", "never".
    reason: what is wrong, in words; hint: which setting to change.
    """

    def __init__(self, problems: Sequence[tuple[str, str, str]]):
        self.kinds = tuple(kind for kind, _r, _h in problems)
        self.kind = self.kinds[0]
        self.reason = "; ".join(reason for _k, reason, _h in problems)
        self.hint = "; ".join(dict.fromkeys(hint for _k, _r, hint in problems if hint))
        super().__init__(f"{self.reason}: {self.hint}" if self.hint else self.reason)


class ResponseTooLarge(OutboundError):
    pass


class ReadDeadlineExceeded(OutboundError):
    pass


# ---------------------------------------------------------------------------- URLs and addresses


@dataclass(frozen=True)
class Target:
    """A URL reduced to what the guard compares: never the raw string."""

    scheme: str
    host: str     # lower case, no trailing dot; IP literals in their canonical form
    port: int     # default ports filled in
    path: str     # without trailing '/'


def parse(url: str, *, base: bool = False) -> Target | None:
    """scheme, host, port and path of an http(s) URL, or None when it must never be called.

    base: a FHIR base URL or an allow-list entry (no query either); otherwise a request URL.
    """
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or parts.fragment or "#" in url:
        return None
    if base and (parts.query or "?" in url):
        return None
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return None  # credentials in the URL would replace the bearer token, or disguise the host
    segments = unquote(parts.path).split("/")
    if "." in segments or ".." in segments or "\\" in unquote(parts.path):
        return None
    host = parts.hostname.lower().rstrip(".")
    literal = ip_literal(host)
    if literal is not None:
        host = str(literal)
    elif not host or any(c in host for c in "%[]:\\ "):
        return None
    return Target(scheme, host, port or (443 if scheme == "https" else 80), parts.path.rstrip("/"))


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host written as an IP literal stands for, legacy IPv4 forms included.

    "2130706433", "0x7f.1" and "127.1" all mean 127.0.0.1 to the C library: they are read here the
    same way, so they cannot pass for host names.
    """
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefx." for c in host.lower()) and any(c.isdigit() for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _unwrap(address: ipaddress.IPv4Address | ipaddress.IPv6Address):
    """The IPv4 address inside an IPv4-mapped, 6to4 or Teredo IPv6 address (what it really reaches)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address.teredo is not None:
            return address.teredo[1]
    return address


def address_problem(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                    allow_private_networks: bool) -> tuple[str, str, str] | None:
    """Why this address may not be called, or None."""
    inner = _unwrap(address)
    if any(a.is_unspecified or a.is_multicast for a in (address, inner)):
        return ("never", "the address is unspecified or multicast", "")
    if allow_private_networks:
        return None
    if any(not a.is_global or a.is_reserved for a in (address, inner)):
        return ("private", "the server is on a loopback, private, link-local or unique-local network",
                PRIVATE_HINT)
    return None


_dns_pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="outbound-dns")  # threads start on demand


def _resolve_within(resolver: Resolver, host: str, port: int, timeout: float | None) -> Sequence[str]:
    """The resolver's answer, waited for at most timeout seconds (getaddrinfo itself has no timeout)."""
    if timeout is None:
        return resolver(host, port)
    future = _dns_pool.submit(resolver, host, port)
    try:
        return future.result(timeout=timeout)
    except FutureTimeout:
        future.cancel()
        raise socket.gaierror(socket.EAI_AGAIN, "name resolution timed out") from None


def resolve(host: str, port: int) -> list[str]:
    """The addresses of a host name, from the system resolver (IP literals and localhost never get here)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


# ---------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class OutboundPolicy:
    """Which URLs may be called, and how.

    servers: URL prefixes; with ``wildcards`` also "loopback" and "*" (fhir_allowed_servers).
    servers_setting: where that list is configured, for the hint of a refusal.
    """

    servers: tuple[str, ...]
    allow_http: bool = False
    allow_private_networks: bool = False
    wildcards: bool = False
    servers_setting: str = ALLOWED_SERVERS_SETTING
    resolver: Resolver = field(default=resolve, repr=False)

    def _listed(self, target: Target) -> bool:
        for entry in self.servers:
            entry = entry.strip()
            if self.wildcards and entry == "*":
                return True
            if self.wildcards and entry.lower() == "loopback":
                literal = ip_literal(target.host)
                if target.host == "localhost" or (literal is not None and _unwrap(literal).is_loopback):
                    return True
                continue
            prefix = parse(entry, base=True)
            if prefix is None or (prefix.scheme, prefix.host, prefix.port) != (
                    target.scheme, target.host, target.port):
                continue
            if prefix.path == "" or target.path == prefix.path or target.path.startswith(prefix.path + "/"):
                return True
        return False

    def check_url(self, url: str, *, base: bool = False) -> Target:
        """The parsed URL when it may be requested; OutboundRefused (naming every problem) otherwise.

        No DNS and no connection: IP literals are checked here, names when connecting.
        """
        target = parse(url, base=base)
        if target is None:
            raise OutboundRefused([("invalid", "not a usable http or https URL", INVALID_HINT)])
        problems = []
        if target.scheme == "http" and not self.allow_http:
            problems.append(("http", "plain http is not allowed", HTTP_HINT))
        if not self._listed(target):
            problems.append(("not-listed", "the server is not in " + self.servers_setting.split(" (")[0],
                             f"add it to {self.servers_setting}"))
        literal = ip_literal(target.host)
        if literal is not None:
            problem = address_problem(literal, self.allow_private_networks)
            if problem:
                problems.append(problem)
        if problems:
            raise OutboundRefused(problems)
        return target

    def addresses(self, host: str, port: int, timeout: float | None = None) -> list[str]:
        """Resolve host once and return its addresses, all checked; OutboundRefused if any is not allowed.

        One disallowed answer refuses the name: a name that also points inside is not trusted.
        Resolution failures (and a resolver slower than timeout) raise OSError (socket.gaierror).
        """
        host = host.strip("[]")
        literal = ip_literal(host)
        if literal is not None:
            answers = [str(literal)]
        elif host.lower().rstrip(".") == "localhost":
            answers = ["127.0.0.1", "::1"]  # RFC 6761: never asked of DNS
        else:
            answers = list(dict.fromkeys(_resolve_within(self.resolver, host, port, timeout)))
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "no address")
        for answer in answers:
            literal = ip_literal(answer)
            if literal is None:
                raise OutboundRefused([("invalid", "the resolver answered something that is not an address",
                                        "")])
            problem = address_problem(literal, self.allow_private_networks)
            if problem:
                raise OutboundRefused([problem])
        return answers

    def check_server(self, url: str, *, timeout: float = 3.05) -> Target:
        """A fhirServer named by a client, checked before anything is gathered (the hooks' 403).

        The URL, then the addresses its name resolves to (waiting at most timeout seconds). A name
        that cannot be resolved is not refused here: fetching from it will fail as unreachable, and
        a complete prefetch needs none. Connections check the addresses again, when they are made.
        """
        target = self.check_url(url, base=True)
        if not self.allow_private_networks and ip_literal(target.host) is None:
            try:
                self.addresses(target.host, target.port, timeout)
            except OSError:
                pass
        return target


def policy_for(settings, client, *, resolver: Resolver | None = None) -> OutboundPolicy:
    """The FHIR servers this request may call: the authenticated client's, or fhir_allowed_servers.

    client: the `AuthClient` that signed the request (flask.g.cds_client), None when authentication
    is off. With authentication on and no client, nothing may be called.
    """
    common = {"allow_http": settings.fhir.allow_http, "allow_private_networks": settings.fhir.allow_private_networks,
              "resolver": resolver or resolve}
    if client is not None:
        return OutboundPolicy(servers=tuple(client.fhir_servers), servers_setting=(
            f"fhir_servers of the [[auth.clients]] entry with issuer '{client.issuer}' in the configuration file"),
            **common)
    if settings.auth.required:
        return OutboundPolicy(servers=(), servers_setting="fhir_servers of the calling client's [[auth.clients]] "
                              "entry in the configuration file", **common)
    return OutboundPolicy(servers=tuple(settings.fhir_allowed_servers), wildcards=True, **common)


def policy_for_urls(settings, urls: Iterable[str], setting: str, *,
                    resolver: Resolver | None = None) -> OutboundPolicy:
    """A policy for URLs the configuration names itself (jwks_url, jku_allowed, a terminology server).

    setting: the configuration key the URLs come from, for the hint of a refusal.
    """
    return OutboundPolicy(servers=tuple(urls), allow_http=settings.fhir.allow_http,
                          allow_private_networks=settings.fhir.allow_private_networks,
                          servers_setting=setting, resolver=resolver or resolve)


# ---------------------------------------------------------------------------- the transport


class _PinnedConnectionMixin:
    """Connects to an address the policy checked, resolved once; Host, SNI and certificate keep the name."""

    policy: OutboundPolicy

    def _new_conn(self) -> socket.socket:
        try:
            timeout = self.timeout if isinstance(self.timeout, int | float) else None
            addresses = self.policy.addresses(self._dns_host, self.port, timeout)
        except OutboundRefused:
            raise
        except OSError as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        error: Exception | None = None
        for address in addresses:
            try:
                sock = urllib3_connection.create_connection(
                    (address, self.port), self.timeout, source_address=self.source_address,
                    socket_options=self.socket_options)
            except TimeoutError as exc:
                error = ConnectTimeoutError(self, f"Connection to {self.host} timed out")
                error.__cause__ = exc
            except OSError as exc:
                error = NewConnectionError(self, f"Failed to establish a new connection: {exc}")
                error.__cause__ = exc
            else:
                sys.audit("http.client.connect", self, self.host, self.port)
                return sock
        assert error is not None
        raise error


class _GuardedAdapter(HTTPAdapter):
    """Checks every request's URL before urllib3 sees it, and connects through pinned connections."""

    def __init__(self, policy: OutboundPolicy, **kwargs: Any):
        self.policy = policy
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        attrs = {"policy": self.policy}
        http_conn = type("PinnedHTTPConnection", (_PinnedConnectionMixin, HTTPConnection), attrs)
        https_conn = type("PinnedHTTPSConnection", (_PinnedConnectionMixin, HTTPSConnection), attrs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("PinnedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
            "https": type("PinnedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
        }

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        raise OutboundRefused([("invalid", "outbound requests never go through a proxy", "")])

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        self.policy.check_url(request.url)
        return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies={})


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """One session serves many servers and patients: never keep or send cookies."""

    def set_ok(self, cookie, request):
        return False

    def return_ok(self, cookie, request):
        return False


class _GuardedSession(requests.Session):
    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs["allow_redirects"] = False  # a redirect is the caller's to report, never followed
        return super().request(*args, **kwargs)


def session(policy: OutboundPolicy, *, pool_size: int = 10) -> requests.Session:
    """A requests.Session whose every request goes through the guard (see the module docstring)."""
    s = _GuardedSession()
    s.trust_env = False  # no proxies or .netrc credentials from the environment ...
    # ... but a deployment's own CA bundle (a hospital's internal CA) is still honoured.
    s.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    s.cookies.set_policy(_NoCookies())
    adapter = _GuardedAdapter(policy, pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


def read_limited(response: requests.Response, max_bytes: int, deadline: float | None = None) -> bytes:
    """A streamed response's body, at most max_bytes, read by the deadline (time.monotonic()).

    Raises ResponseTooLarge or ReadDeadlineExceeded; a Content-Length over the cap is refused
    before reading. Errors of the connection itself come as requests / urllib3 exceptions.
    """
    declared = response.headers.get("Content-Length", "")
    if declared.strip().isdigit() and int(declared) > max_bytes:
        raise ResponseTooLarge(f"response larger than {max_bytes} bytes")
    chunks, size = [], 0
    while True:
        # read1 returns whatever has arrived (read() would wait for a full chunk, byte by trickled byte)
        chunk = response.raw.read1(65536, decode_content=True)
        if not chunk:
            break
        size += len(chunk)
        if size > max_bytes:
            raise ResponseTooLarge(f"response larger than {max_bytes} bytes")
        chunks.append(chunk)
        if deadline is not None and time.monotonic() > deadline:
            raise ReadDeadlineExceeded("response not read in time")
    return b"".join(chunks)


_shared: OrderedDict[OutboundPolicy, requests.Session] = OrderedDict()
_shared_lock = threading.Lock()
MAX_SHARED_SESSIONS = 32  # policies are built per configured client: a handful in practice


def _shared_session(policy: OutboundPolicy) -> requests.Session:
    """get_json's pooled session for this policy (the least recently used one is closed beyond the bound)."""
    with _shared_lock:
        if policy in _shared:
            _shared.move_to_end(policy)
            return _shared[policy]
        _shared[policy] = session(policy)
        while len(_shared) > MAX_SHARED_SESSIONS:
            _shared.popitem(last=False)[1].close()
        return _shared[policy]


def get_json(url: str, policy: OutboundPolicy, *, timeout: float = 10.0, max_bytes: int = DEFAULT_MAX_BYTES,
             headers: dict[str, str] | None = None) -> Any:
    """GET url through the guard and return its JSON body.

    timeout bounds the whole call (connect, wait, body); redirects are not followed; the body is
    capped at max_bytes. Raises OutboundRefused before any connection when the policy refuses the
    URL or its addresses, OutboundError for anything else (network, HTTP status, size, not JSON).
    """
    policy.check_url(url)
    deadline = time.monotonic() + timeout
    sent = {"Accept": "application/json"}
    sent.update(headers or {})
    try:
        response = _shared_session(policy).get(url, headers=sent, timeout=(min(timeout, 3.05), timeout),
                                               stream=True, allow_redirects=False)
    except OutboundRefused:
        raise
    except requests.Timeout:
        raise OutboundError("timed out") from None
    except requests.RequestException as exc:
        raise OutboundError(f"unreachable ({type(exc).__name__})") from None
    with response:
        if not 200 <= response.status_code < 300:
            raise OutboundError(f"HTTP {response.status_code}")
        try:
            body = read_limited(response, max_bytes, deadline)
        except (requests.RequestException, OSError) as exc:
            raise OutboundError(f"unreachable ({type(exc).__name__})") from None
        except Exception as exc:
            if isinstance(exc, OutboundError):
                raise
            raise OutboundError(f"response not read ({type(exc).__name__})") from None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise OutboundError("response is not JSON") from None
