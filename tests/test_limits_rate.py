"""Per-client rate limit (rate_limit_per_minute): 429 with Retry-After once a client is over it; off when 0."""

import http.client
import json

from conftest import patient_view_body
from flask import g, request

from cds_service.app import create_app
from cds_service.settings import AuthClient, load_settings

PV = "/cds-services/lbp-patient-view"
BODY = patient_view_body()


def app_with_limit(tmp_path, per_minute):
    app = create_app(load_settings(env={}, database_url=f"sqlite:///{tmp_path / 'rate.db'}",
                                   rate_limit_per_minute=per_minute))

    @app.before_request
    def authenticated_as_the_test_says():
        # Stands in for JWT authentication, which runs app-wide before the rate limit and sets g.cds_client.
        issuer = request.headers.get("X-Test-Issuer")
        g.cds_client = AuthClient(issuer=issuer, jwks_file="unused") if issuer else None

    return app


def call(client, issuer=None, address="127.0.0.1", path=PV):
    headers = {"X-Test-Issuer": issuer} if issuer else {}
    return client.post(path, json=BODY, headers=headers, environ_base={"REMOTE_ADDR": address})


def test_a_client_over_the_limit_gets_429_with_retry_after(tmp_path):
    client = app_with_limit(tmp_path, 3).test_client()
    assert [call(client).status_code for _ in range(3)] == [200, 200, 200]
    limited = call(client)
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    error = limited.get_json()["error"]
    assert error["code"] == "too-many-requests"
    assert "rate_limit_per_minute" in error["message"] and "LBP_RATE_LIMIT_PER_MINUTE" in error["message"]


def test_no_limit_when_rate_limit_per_minute_is_zero(tmp_path):
    client = app_with_limit(tmp_path, 0).test_client()
    assert {call(client).status_code for _ in range(30)} == {200}


def test_the_local_profile_has_no_rate_limit():
    assert load_settings(env={}).rate_limit_per_minute == 0


def test_clients_are_told_apart_by_issuer_not_address(tmp_path):
    client = app_with_limit(tmp_path, 2).test_client()
    assert call(client, "https://ehr-a.example.org", "10.0.0.1").status_code == 200
    assert call(client, "https://ehr-a.example.org", "10.0.0.2").status_code == 200
    assert call(client, "https://ehr-a.example.org", "10.0.0.3").status_code == 429
    assert call(client, "https://ehr-b.example.org", "10.0.0.1").status_code == 200


def test_unauthenticated_clients_are_told_apart_by_address(tmp_path):
    client = app_with_limit(tmp_path, 1).test_client()
    assert call(client, address="10.0.0.1").status_code == 200
    assert call(client, address="10.0.0.1").status_code == 429
    assert call(client, address="10.0.0.2").status_code == 200


def test_feedback_counts_against_the_same_limit(tmp_path):
    client = app_with_limit(tmp_path, 1).test_client()
    assert call(client).status_code == 200
    assert call(client, path=f"{PV}/feedback").status_code == 429


def test_discovery_health_and_the_api_document_are_not_limited(tmp_path):
    client = app_with_limit(tmp_path, 1).test_client()
    for path in ["/cds-services", "/healthz", "/readyz", "/openapi.json"] * 3:
        assert client.get(path).status_code == 200, path


def _post_from(service, source_ip: str) -> tuple[int, dict, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30, source_address=(source_ip, 0))
    try:
        conn.request("POST", PV, body=json.dumps(BODY), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        conn.close()


def test_the_running_service_limits_per_client_address_per_worker(start_service):
    service = start_service(rate_limit_per_minute="2", workers="1")  # one worker: one counter
    assert [_post_from(service, "127.0.0.1")[0] for _ in range(2)] == [200, 200]
    status, headers, body = _post_from(service, "127.0.0.1")
    assert status == 429 and int(headers["Retry-After"]) >= 1
    assert body["error"]["status"] == 429
    assert _post_from(service, "127.0.0.2")[0] == 200  # another client (address) is not held back


def test_authenticated_clients_are_limited_per_issuer_after_authentication(tmp_path, start_service):
    from auth_tokens import Issuer, jwks, make_key, write_config

    public = "https://cds.example.test"
    key_a, key_b = make_key("ES384", kid="ehr-a-key"), make_key("ES256", kid="ehr-b-key")
    (tmp_path / "a.json").write_text(json.dumps(jwks(key_a)))
    (tmp_path / "b.json").write_text(json.dumps(jwks(key_b)))
    config = write_config(tmp_path / "lbp.toml", [{"issuer": "https://ehr-a.example.test", "jwks_file": "a.json"},
                                                  {"issuer": "https://ehr-b.example.test", "jwks_file": "b.json"}],
                          public_base_url=public, rate_limit_per_minute=2)
    service = start_service(config=str(config), workers="1")
    ehr_a = Issuer("https://ehr-a.example.test", key_a, public).auth(service.base_url)
    ehr_b = Issuer("https://ehr-b.example.test", key_b, public).auth(service.base_url)

    # Authentication runs first: calls without a token stay 401 however many (never 429 on the address).
    assert [service.post("lbp-patient-view", BODY).status_code for _ in range(3)] == [401, 401, 401]
    assert [service.post("lbp-patient-view", BODY, auth=ehr_a).status_code for _ in range(2)] == [200, 200]
    limited = service.post("lbp-patient-view", BODY, auth=ehr_a)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert service.post("lbp-patient-view", BODY, auth=ehr_b).status_code == 200  # same address, other issuer
