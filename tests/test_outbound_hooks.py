"""A fhirServer the caller may not name gets 403 before anything is gathered, and no connection.

The service runs in this process on a real loopback socket (werkzeug), so the connect guard
(tests/conftest.py) sees every connection its code attempts: "no outbound connection" is checked
by the guard, never by timing. DNS is an injected resolver (app.extensions["lbp_dns_resolver"]).
"""

from __future__ import annotations

import os
import socket
import threading

import pytest
import requests
from conftest import today
from flask import g
from werkzeug.serving import make_server

from cds_service import cli
from cds_service.app import create_app
from cds_service.example_patients import examples
from cds_service.settings import AuthClient, load_settings

PUBLIC = "93.184.216.34"


class FakeDns:
    def __init__(self, answers: dict[str, list[list[str]]]):
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "unknown name")
        return self.answers[host][min(self.calls.count(host), len(self.answers[host])) - 1]


class InProcessService:
    def __init__(self, app):
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.base_url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def post(self, service_id: str, body: dict) -> requests.Response:
        return requests.post(f"{self.base_url}/cds-services/{service_id}", json=body, timeout=30)

    def stop(self):
        self.server.shutdown()


@pytest.fixture
def start(tmp_path):
    running = []

    def start_(dns: FakeDns | None = None, cds_client: AuthClient | None = None, **values) -> InProcessService:
        app = create_app(load_settings(env={}, database_url=f"sqlite:///{tmp_path / 'hooks.db'}",
                                       log_level="WARNING", **values))
        app.extensions["lbp_dns_resolver"] = dns or FakeDns({})
        if cds_client is not None:
            @app.before_request
            def authenticated_as():  # what the authentication layer sets once a JWT is verified
                g.cds_client = cds_client
        running.append(InProcessService(app))
        return running[-1]

    yield start_
    for service in running:
        service.stop()


def complete_request(fhir_server: str | None = None) -> tuple[str, dict]:
    """A patient-view request with every prefetch key filled: nothing would need fetching."""
    example = next(e for e in examples(today()) if e["hook"] == "patient-view")
    service_id, body = cli.example_request(example)
    if fhir_server:
        body["fhirServer"] = fhir_server
    return service_id, body


def forbidden(response: requests.Response) -> dict:
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == "forbidden" and error["details"][0]["field"] == "fhirServer"
    return error


STRICT = {"fhir_allowed_servers": "*", "fhir_allow_http": True, "fhir_allow_private_networks": False}


def test_a_complete_prefetch_with_an_allowed_server_is_answered(start):
    service = start()
    response = service.post(*complete_request("http://127.0.0.1:9/fhir"))
    assert response.status_code == 200, response.text


def test_a_server_not_in_fhir_allowed_servers_is_403_even_with_a_complete_prefetch(start, connect_guard):
    service = start()
    error = forbidden(service.post(*complete_request("https://ehr.example.org/fhir")))
    assert "add it to fhir_allowed_servers (LBP_FHIR_ALLOWED_SERVERS)" in error["message"]
    assert connect_guard.attempts == []


@pytest.mark.parametrize("server", [
    "https://10.1.2.3/fhir", "https://192.168.10.20/fhir", "https://172.16.0.9/fhir",
    "http://169.254.169.254/latest/meta-data", "https://[fe80::1]/fhir", "https://[fd00:ec2::254]/fhir",
    "https://127.0.0.1:8443/fhir",
])
def test_a_private_or_link_local_server_is_403_and_never_contacted(start, connect_guard, server):
    dns = FakeDns({})
    service = start(dns, **STRICT)
    service_id, body = complete_request(server)
    del body["prefetch"]["conditions"]  # something to fetch, were the server not refused
    error = forbidden(service.post(service_id, body))
    assert "fhir.allow_private_networks = true (LBP_FHIR_ALLOW_PRIVATE_NETWORKS)" in error["message"]
    assert dns.calls == [] and connect_guard.attempts == []


def test_a_name_resolving_to_a_private_address_is_403_and_never_contacted(start, connect_guard):
    dns = FakeDns({"ehr.example.org": [["10.0.0.8"]]})
    service = start(dns, **STRICT)
    error = forbidden(service.post(*complete_request("https://ehr.example.org/fhir")))
    assert "LBP_FHIR_ALLOW_PRIVATE_NETWORKS" in error["message"]
    assert dns.calls == ["ehr.example.org"] and connect_guard.attempts == []


def test_plain_http_is_403_when_allow_http_is_off(start, connect_guard):
    service = start(fhir_allowed_servers="*", fhir_allow_http=False)
    error = forbidden(service.post(*complete_request("http://ehr.example.org/fhir")))
    assert "fhir.allow_http = true (LBP_FHIR_ALLOW_HTTP)" in error["message"]
    assert connect_guard.attempts == []


def test_a_rebinding_name_is_refused_when_connecting_and_nothing_is_sent(start, connect_guard):
    """Checked public when the request arrives, private when the fetch connects: the fetch is refused."""
    dns = FakeDns({"ehr.example.org": [[PUBLIC], ["169.254.169.254"]]})
    service = start(dns, **STRICT)
    service_id, body = complete_request("https://ehr.example.org/fhir")
    del body["prefetch"]["conditions"]
    response = service.post(service_id, body)
    assert response.status_code == 412, response.text
    assert response.json()["error"]["details"] == [
        {"field": "prefetch.conditions", "reason": "FHIR server not allowed"}]
    assert connect_guard.attempts == []


# ---------------------------------------------------------------------------- an authenticated client


def client_with(*servers: str) -> AuthClient:
    return AuthClient(issuer="https://ehr.example.org", jwks_file="keys.json", fhir_servers=servers)


def test_with_a_client_only_its_fhir_servers_may_be_named(start, connect_guard):
    service = start(cds_client=client_with("https://ehr.example.org/fhir"), **STRICT)
    error = forbidden(service.post(*complete_request("https://ehr.example.org/fhirx")))
    assert ("add it to fhir_servers of the [[auth.clients]] entry with issuer 'https://ehr.example.org'"
            in error["message"])
    assert connect_guard.attempts == []


def test_a_clients_own_server_resolving_to_a_private_address_is_403(start, connect_guard):
    dns = FakeDns({"ehr.example.org": [["192.168.1.1"]]})
    service = start(dns, cds_client=client_with("https://ehr.example.org/fhir"), **STRICT)
    error = forbidden(service.post(*complete_request("https://ehr.example.org/fhir/r4")))
    assert "LBP_FHIR_ALLOW_PRIVATE_NETWORKS" in error["message"] and connect_guard.attempts == []


def test_a_clients_own_server_with_a_complete_prefetch_is_answered(start):
    dns = FakeDns({"ehr.example.org": [[PUBLIC]]})
    service = start(dns, cds_client=client_with("https://ehr.example.org/fhir"), **STRICT)
    assert service.post(*complete_request("https://ehr.example.org/fhir")).status_code == 200


# ---------------------------------------------------------------------------- the check command


def test_check_prints_which_setting_allows_the_server(monkeypatch, capsys, connect_guard):
    for name in [n for n in os.environ if n.startswith("LBP_")]:
        monkeypatch.delenv(name)
    code = cli.main(["check", "--fhir", "https://ehr.example.org/fhir", "--patient", "p1"])
    err = capsys.readouterr().err
    assert code == 1
    assert "https://ehr.example.org/fhir is refused (the server is not in fhir_allowed_servers)" in err
    assert "add it to fhir_allowed_servers (LBP_FHIR_ALLOWED_SERVERS)" in err
    assert connect_guard.attempts == []



def test_the_connect_guard_also_watches_the_service_subprocesses(start_service, connect_guard):
    """A service told to call a private address (allowed by its settings) is stopped by the guard."""
    service = start_service(fhir_allowed_servers="*", fhir_allow_private_networks="true", fhir_max_retries="0",
                            workers="1")
    service_id, body = complete_request("http://10.255.255.1/fhir")
    del body["prefetch"]["conditions"]
    response = service.post(service_id, body)
    assert response.status_code == 412, response.text
    assert connect_guard.take() == ["10.255.255.1"]
