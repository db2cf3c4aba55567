"""The outbound guard: which URLs may be called, which addresses may be connected to, and how.

Every test runs under the connect guard (tests/conftest.py): a connection outside loopback is
blocked before it leaves the process and fails the test, unless the test takes it to check which
address the code chose. DNS is always the injected `FakeDns`: no test asks a real resolver.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from cds_service import outbound
from cds_service.fhir_client import FhirClient
from cds_service.outbound import OutboundError, OutboundPolicy, OutboundRefused, ResponseTooLarge, policy_for
from cds_service.settings import AuthClient, AuthSettings, load_settings, replace

PUBLIC = "93.184.216.34"  # a public address: never reached, the connect guard blocks it


class FakeDns:
    """An injected resolver: name -> answers, or a list of answers given one per call (rebinding)."""

    def __init__(self, answers: dict[str, list[str] | list[list[str]]]):
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        answer = self.answers.get(host)
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "unknown name")
        if answer and isinstance(answer[0], list):
            return answer[min(self.calls.count(host), len(answer)) - 1]
        return answer


def settings(**values):
    return load_settings(env={}, database_url="sqlite://", **values)


def policy(servers=("*",), *, wildcards=True, allow_http=True, allow_private_networks=False, resolver=None):
    return OutboundPolicy(servers=tuple(servers), allow_http=allow_http,
                          allow_private_networks=allow_private_networks, wildcards=wildcards,
                          resolver=resolver or FakeDns({}))


def refusal(policy_: OutboundPolicy, url: str, *, base: bool = True) -> OutboundRefused:
    with pytest.raises(OutboundRefused) as refused:
        policy_.check_url(url, base=base)
    return refused.value


# ------------------------------------------------------------------------------- a loopback server


class Recorder(BaseHTTPRequestHandler):
    """Answers by path and records each request's path and Host header."""

    def do_GET(self):  # noqa: N802 (http.server API)
        self.server.seen.append((self.path, self.headers.get("Host")))
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith("/big"):
            body = b"[" + b"0," * 5000 + b"0]"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if "declared" in self.path:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path.startswith("/fhir/Observation"):
            body = {"resourceType": "Bundle", "type": "searchset", "entry": [],
                    "link": [{"relation": "next", "url": "http://169.254.169.254/fhir/Observation?page=2"}]}
        else:
            body = {"resourceType": "Patient", "id": "p1"}
        raw = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


def serve(ssl_context: ssl.SSLContext | None = None):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.daemon_threads = True
    server.seen = []
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def local():
    server = serve()
    yield server
    server.shutdown()
    server.server_close()


def port_of(server) -> int:
    return server.server_address[1]


# ------------------------------------------------------------------------------- prefixes, parsed

ORG = ("https://ehr.example.org/fhir",)


@pytest.mark.parametrize("url", [
    "https://ehr.example.org/fhir",
    "https://ehr.example.org/fhir/",
    "https://ehr.example.org/fhir/r4",
    "HTTPS://EHR.Example.ORG/fhir/r4",
    "https://ehr.example.org:443/fhir",
    "https://ehr.example.org./fhir",
])
def test_a_prefix_allows_itself_and_paths_below_it(url):
    assert policy(ORG, wildcards=False).check_url(url, base=True).host == "ehr.example.org"


@pytest.mark.parametrize("url", [
    "https://ehr.example.org/fhirx",
    "https://ehr.example.org/fhi",
    "https://ehr.example.org/",
    "https://ehr.example.org/FHIR",
    "https://ehr.example.org.evil.com/fhir",
    "https://evil.com/ehr.example.org/fhir",
    "https://ehr.example.org:8443/fhir",
    "https://ehr.example.org:80/fhir",
    "http://ehr.example.org/fhir",
])
def test_a_prefix_does_not_match_another_path_host_port_or_scheme(url):
    assert refusal(policy(ORG, wildcards=False), url).kinds == ("not-listed",)


@pytest.mark.parametrize("url", [
    "https://ehr.example.org@evil.com/fhir",
    "https://ehr.example.org:443@evil.com/fhir",
    "https://user:pass@ehr.example.org/fhir",
    "https://evil.com#@ehr.example.org/fhir",
    "https://evil.com\\@ehr.example.org/fhir",
    "https://ehr.example.org/fhir/../admin",
    "https://ehr.example.org/fhir/%2e%2e/admin",
    "https://ehr.example.org/fhir?x=1",
    "ftp://ehr.example.org/fhir",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "ehr.example.org/fhir",
    "https:///fhir",
    "",
])
def test_userinfo_tricks_and_unusable_urls_are_refused_as_invalid(url):
    assert refusal(policy(ORG, wildcards=False), url).kinds == ("invalid",)


def test_a_prefix_with_a_trailing_slash_is_the_same_prefix():
    allowing = policy(("https://ehr.example.org/fhir/",), wildcards=False)
    assert allowing.check_url("https://ehr.example.org/fhir", base=True)
    assert refusal(allowing, "https://ehr.example.org/fhirx").kinds == ("not-listed",)


def test_wildcards_are_words_of_fhir_allowed_servers_only():
    client_like = policy(("*", "loopback"), wildcards=False, allow_private_networks=True)
    assert refusal(client_like, "https://any.example/fhir").kinds == ("not-listed",)
    assert refusal(client_like, "http://127.0.0.1:8080/fhir").kinds == ("not-listed",)


def test_an_empty_list_allows_nothing():
    assert refusal(policy((), wildcards=True), "https://ehr.example.org/fhir").kinds == ("not-listed",)


def test_loopback_allows_loopback_addresses_and_localhost_only():
    loopback = policy(("loopback",), allow_private_networks=True)
    for url in ("http://127.0.0.1:8080/fhir", "http://127.0.0.2/fhir", "http://[::1]:9/fhir", "http://localhost/fhir"):
        loopback.check_url(url, base=True)
    assert refusal(loopback, "http://10.0.0.1/fhir").kinds == ("not-listed",)


# ------------------------------------------------------------------------------- policy_for


def client(*servers: str) -> AuthClient:
    return AuthClient(issuer="https://ehr.example.org", jwks_file="keys.json", fhir_servers=servers)


def with_auth(base, *clients: AuthClient):
    return replace(base, auth=AuthSettings(required=True, clients=clients))


def test_with_authentication_the_clients_fhir_servers_decide():
    configured = with_auth(settings(fhir_allowed_servers="*"), client("https://ehr.example.org/fhir"))
    allowed = policy_for(configured, configured.auth.clients[0])
    allowed.check_url("https://ehr.example.org/fhir/r4", base=True)
    refused = refusal(allowed, "https://other.example.org/fhir")
    assert "fhir_servers of the [[auth.clients]] entry with issuer 'https://ehr.example.org'" in refused.hint


def test_with_authentication_and_no_client_nothing_may_be_called():
    configured = with_auth(settings(fhir_allowed_servers="*"))
    assert refusal(policy_for(configured, None), "https://ehr.example.org/fhir").kinds == ("not-listed",)


def test_without_authentication_fhir_allowed_servers_decide_and_the_hint_names_them():
    refused = refusal(policy_for(settings(), None), "https://ehr.example.org/fhir")
    assert refused.hint == "add it to fhir_allowed_servers (LBP_FHIR_ALLOWED_SERVERS)"
    policy_for(settings(), None).check_url("http://127.0.0.1:8080/fhir", base=True)  # default: loopback


def test_the_fhir_section_applies_to_every_policy():
    strict = settings(fhir_allowed_servers="*", fhir_allow_http=False, fhir_allow_private_networks=False)
    assert refusal(policy_for(strict, None), "http://ehr.example.org/fhir").kinds == ("http",)
    authed = with_auth(strict, client("http://ehr.example.org/fhir"))
    assert refusal(policy_for(authed, authed.auth.clients[0]), "http://ehr.example.org/fhir").kinds == ("http",)


# ------------------------------------------------------------------------------- http and addresses


def test_plain_http_is_refused_unless_allowed_and_the_hint_names_the_setting():
    refused = refusal(policy(allow_http=False), "http://ehr.example.org/fhir")
    assert refused.kinds == ("http",)
    assert "fhir.allow_http = true (LBP_FHIR_ALLOW_HTTP)" in refused.hint
    policy(allow_http=True).check_url("http://ehr.example.org/fhir", base=True)


@pytest.mark.parametrize("url", [
    "https://10.0.0.5/fhir",
    "https://192.168.1.10/fhir",
    "https://172.16.5.4/fhir",
    "https://172.31.255.255/fhir",
    "http://169.254.169.254/latest/meta-data",
    "https://[fe80::1]/fhir",
    "https://[fe80::1%25eth0]/fhir",
    "https://[fd12:3456::1]/fhir",
    "https://[fc00::1]/fhir",
    "https://127.0.0.1:8080/fhir",
    "https://[::1]/fhir",
    "https://[::ffff:10.0.0.1]/fhir",
    "https://[::ffff:169.254.169.254]/fhir",
    "https://[2002:a00:1::]/fhir",
    "https://100.64.0.1/fhir",
    "https://2130706433/fhir",
    "https://0x7f.1/fhir",
    "https://127.1/fhir",
    "https://0251.0376.0251.0376/fhir",
])
def test_private_link_local_and_loopback_literals_are_refused_before_any_resolution(url):
    dns = FakeDns({})
    refused = refusal(policy(resolver=dns), url, base=False)
    assert refused.kinds == ("private",)
    assert "fhir.allow_private_networks = true (LBP_FHIR_ALLOW_PRIVATE_NETWORKS)" in refused.hint
    assert dns.calls == []


@pytest.mark.parametrize("url", ["https://0.0.0.0/fhir", "https://[::]/fhir", "https://224.0.0.1/fhir"])
def test_unspecified_and_multicast_addresses_are_refused_even_on_private_networks(url):
    assert refusal(policy(allow_private_networks=True), url).kinds == ("never",)


def test_every_problem_is_named_at_once():
    refused = refusal(policy(ORG, wildcards=False, allow_http=False), "http://10.1.2.3/fhir")
    assert refused.kinds == ("http", "not-listed", "private")
    assert "LBP_FHIR_ALLOW_HTTP" in refused.hint and "add it to fhir_allowed_servers" in refused.hint
    assert "LBP_FHIR_ALLOW_PRIVATE_NETWORKS" in refused.hint


@pytest.mark.parametrize("answers", [["10.0.0.7"], ["169.254.169.254"], ["fe80::1"], ["fd00::7"], ["127.0.0.1"],
                                     [PUBLIC, "192.168.0.4"]])
def test_a_name_resolving_to_any_private_address_is_refused(answers):
    with pytest.raises(OutboundRefused) as refused:
        policy(resolver=FakeDns({"ehr.example.org": answers})).addresses("ehr.example.org", 443)
    assert refused.value.kinds == ("private",)


# ------------------------------------------------------------------------------- connections (real sockets)


@pytest.mark.parametrize("url", ["https://10.0.0.5/fhir/Patient/p1", "http://169.254.169.254/latest/meta-data/",
                                 "https://[fe80::1]/fhir/Patient/p1", "https://[fd00::1]/fhir/Patient/p1",
                                 "https://192.168.0.1/x", "https://172.16.0.1/x"])
def test_a_refused_address_gets_no_connection_attempt(url, connect_guard):
    with pytest.raises(OutboundRefused):
        outbound.get_json(url, policy(), timeout=2)
    with pytest.raises(OutboundRefused):
        outbound.session(policy()).get(url, timeout=2)
    assert connect_guard.attempts == []


def test_a_guarded_session_refuses_an_unlisted_url_before_resolving_it(connect_guard):
    dns = FakeDns({"other.example.org": [PUBLIC]})
    with pytest.raises(OutboundRefused) as refused:
        outbound.session(policy(ORG, wildcards=False, resolver=dns)).get("https://other.example.org/fhir", timeout=2)
    assert refused.value.kinds == ("not-listed",) and dns.calls == [] and connect_guard.attempts == []


def test_a_name_resolving_to_a_private_address_gets_no_connection_attempt(connect_guard):
    dns = FakeDns({"ehr.example.org": ["10.20.30.40"]})
    with pytest.raises(OutboundRefused) as refused:
        outbound.get_json("https://ehr.example.org/fhir/metadata", policy(resolver=dns), timeout=2)
    assert refused.value.kinds == ("private",) and dns.calls == ["ehr.example.org"]
    assert connect_guard.attempts == []


def test_dns_rebinding_the_connection_goes_to_the_address_that_was_checked(connect_guard):
    """The resolver answers a public address first and a private one after: only the first is used."""
    dns = FakeDns({"ehr.example.org": [[PUBLIC], ["169.254.169.254"]]})
    with pytest.raises(OutboundError):
        outbound.get_json("https://ehr.example.org/fhir/metadata", policy(resolver=dns), timeout=2)
    assert connect_guard.take() == [PUBLIC]
    assert dns.calls == ["ehr.example.org"]  # resolved once: the checked answer is the one connected to


def test_a_pinned_connection_keeps_the_name_in_the_host_header(local):
    dns = FakeDns({"ehr.test": ["127.0.0.1"]})
    url = f"http://ehr.test:{port_of(local)}/fhir/Patient/p1"
    assert outbound.get_json(url, policy(resolver=dns, allow_private_networks=True), timeout=5)["id"] == "p1"
    assert local.seen == [("/fhir/Patient/p1", f"ehr.test:{port_of(local)}")]


@pytest.fixture
def tls_server():
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("ehr.test").configure_cert(context)
    server = serve(context)
    with ca.cert_pem.tempfile() as ca_file:
        yield server, ca_file
    server.shutdown()
    server.server_close()


def test_tls_verifies_the_certificate_for_the_name_not_the_pinned_address(tls_server):
    server, ca_file = tls_server
    dns = FakeDns({"ehr.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    guarded = outbound.session(policy(resolver=dns, allow_private_networks=True))
    guarded.verify = ca_file
    ok = guarded.get(f"https://ehr.test:{port_of(server)}/fhir/Patient/p1", timeout=5)
    assert ok.json()["id"] == "p1"
    with pytest.raises(requests.exceptions.SSLError):
        guarded.get(f"https://other.test:{port_of(server)}/fhir/Patient/p1", timeout=5)


def test_a_deployments_ca_bundle_is_honoured(tls_server, monkeypatch):
    server, ca_file = tls_server
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca_file)
    guarded = outbound.session(policy(resolver=FakeDns({"ehr.test": ["127.0.0.1"]}), allow_private_networks=True))
    assert guarded.get(f"https://ehr.test:{port_of(server)}/fhir/Patient/p1", timeout=5).json()["id"] == "p1"


def test_a_redirect_to_the_metadata_address_is_not_followed(local, connect_guard):
    url = f"http://127.0.0.1:{port_of(local)}/redirect"
    allowing = policy(allow_private_networks=True)
    with pytest.raises(OutboundError, match="HTTP 302"):
        outbound.get_json(url, allowing, timeout=5)
    assert outbound.session(allowing).get(url, timeout=5, allow_redirects=True).status_code == 302
    client = FhirClient(settings(fhir_max_retries=0))
    result = client.fetch_all(f"http://127.0.0.1:{port_of(local)}/redirect", {"a": "Patient/p1"}, "t0k3n")["a"]
    client.close()
    assert not result.ok and result.status == 302
    assert connect_guard.attempts == [] and len(local.seen) == 3


def test_a_paging_link_to_the_metadata_address_is_not_followed(local, connect_guard):
    client = FhirClient(settings(fhir_max_retries=0))
    result = client.fetch_all(f"http://127.0.0.1:{port_of(local)}/fhir", {"obs": "Observation?patient=p1"},
                              "t0k3n")["obs"]
    client.close()
    assert result.ok and result.truncated and result.pages == 1
    assert [path for path, _host in local.seen] == ["/fhir/Observation?patient=p1&_count=200"]
    assert connect_guard.attempts == []


@pytest.mark.parametrize("path", ["/big-declared", "/big-chunked"])
def test_a_response_over_the_cap_is_refused(local, path):
    with pytest.raises(ResponseTooLarge):
        outbound.get_json(f"http://127.0.0.1:{port_of(local)}{path}", policy(allow_private_networks=True),
                          timeout=5, max_bytes=1000)
    assert len(outbound.get_json(f"http://127.0.0.1:{port_of(local)}{path}", policy(allow_private_networks=True),
                                 timeout=5, max_bytes=20_000)) == 5001


def test_proxies_from_the_environment_are_not_used(local, monkeypatch):
    proxy = serve()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port_of(proxy)}")
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{port_of(proxy)}")
    try:
        outbound.get_json(f"http://127.0.0.1:{port_of(local)}/fhir/Patient/p1", policy(allow_private_networks=True),
                          timeout=5)
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert proxy.seen == [] and len(local.seen) == 1


# ------------------------------------------------------------------------------- the FHIR client


def test_the_fhir_client_uses_the_policy_it_is_given(local, connect_guard):
    dns = FakeDns({"ehr.test": ["127.0.0.1"], "inside.test": ["10.9.8.7"]})
    base = settings(fhir_allowed_servers="*", fhir_allow_private_networks=False)
    fhir = FhirClient(base)
    try:
        let_in = policy((f"http://ehr.test:{port_of(local)}/fhir",), wildcards=False, allow_private_networks=True,
                        resolver=dns)
        ok = fhir.fetch_all(f"http://ehr.test:{port_of(local)}/fhir", {"p": "Patient/p1"}, None, policy=let_in)["p"]
        assert ok.ok and ok.resource["id"] == "p1"
        keep_out = policy(resolver=dns)
        refused = fhir.fetch_all(f"http://inside.test:{port_of(local)}/fhir", {"p": "Patient/p1"}, "t0k3n",
                                 policy=keep_out)["p"]
        assert not refused.ok and refused.error == "FHIR server not allowed"
        unlisted = fhir.fetch_all("https://ehr.example.org/fhir", {"p": "Patient/p1"}, "t0k3n", policy=let_in)["p"]
        assert unlisted.error == "FHIR server not allowed"
    finally:
        fhir.close()
    assert len(local.seen) == 1 and connect_guard.attempts == []



# ------------------------------------------------------------------------------- the connect guard itself


@pytest.mark.parametrize("address", [("10.255.255.1", 80), ("169.254.169.254", 80), ("fe80::1", 80, 0, 0),
                                     (PUBLIC, 443)])
def test_the_connect_guard_blocks_and_reports_any_connection_outside_loopback(connect_guard, address):
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock, pytest.raises(OSError, match="connect guard"):
        sock.connect(address)
    assert connect_guard.take() == [address[0]]


def test_the_connect_guard_lets_loopback_through(local, connect_guard):
    with socket.create_connection(("127.0.0.1", port_of(local)), timeout=5):
        pass
    assert connect_guard.attempts == []


def test_a_resolver_that_does_not_answer_is_not_waited_for_beyond_the_timeout(connect_guard):
    release = threading.Event()

    def hanging(host: str, port: int) -> list[str]:
        release.wait(30)
        return ["10.0.0.1"]

    try:
        with pytest.raises(socket.gaierror):
            policy(resolver=hanging).addresses("ehr.example.org", 443, timeout=0.2)
        # Not refused when the request arrives (a complete prefetch needs no connection) ...
        assert policy(resolver=hanging).check_server("https://ehr.example.org/fhir", timeout=0.2).host
        # ... and unreachable, with nothing sent, when a fetch needs one.
        with pytest.raises(OutboundError, match="unreachable"):
            outbound.get_json("https://ehr.example.org/fhir/metadata", policy(resolver=hanging), timeout=0.2)
    finally:
        release.set()
    assert connect_guard.attempts == []
