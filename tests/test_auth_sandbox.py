"""The public CDS Hooks sandbox's own requests, with the JWTs it really signed, are accepted; tampered
or replayed, they are refused.

The captures (tests/fixtures/cds-hooks-spec/cds-hooks-sandbox/captured/, see its README) expired
minutes after they were made, so the app runs in-process on a real socket with its clock set to each
token's iat. Their aud is the stub's URL (http://localhost:3000/...), so that is public_base_url.
"""

from __future__ import annotations

import base64
import json
import logging

import pytest
import requests
from auth_tokens import write_config
from conftest import FIXTURES

from cds_service.app import create_app
from cds_service.services import SERVICES
from cds_service.settings import load_settings
from cds_service.store import CallRecord

SANDBOX = FIXTURES / "cds-hooks-spec" / "cds-hooks-sandbox"
CAPTURED = SANDBOX / "captured"
SANDBOX_ISSUER = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
CALLS = ("discovery", "patient-view", "order-select-pama-empty-draft", "order-select-pama-study-only",
         "order-select-pama", "feedback-accepted", "feedback-overridden-with-reason", "feedback-overridden")
# The cards the capture stub issued, which the captured feedback is about.
STUB_CARDS = {"lbp-patient-view": ["a0000000-0000-4000-8000-000000000001", "a0000000-0000-4000-8000-000000000002"],
              "lbp-imaging-order-select": ["b0000000-0000-4000-8000-000000000001"]}


def captured(name: str) -> dict:
    return json.loads((CAPTURED / f"{name}.json").read_text(encoding="utf-8"))


def token_of(request: dict) -> str:
    return request["headers"]["authorization"].removeprefix("Bearer ")


class FrozenClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return FrozenClock()


def sandbox_service(tmp_path, clock, serve_app, jku_allowed=(SANDBOX_JKU,)):
    config = write_config(
        tmp_path / "lbp.toml",
        [{"issuer": SANDBOX_ISSUER, "jwks_file": str(SANDBOX / "jwks.json"), "jku_allowed": list(jku_allowed),
          "fhir_servers": ["http://localhost:8081"]}],
        fhir={"allow_http": True, "allow_private_networks": True},
        public_base_url="http://localhost:3000", database_url=f"sqlite:///{tmp_path / 'sandbox.db'}",
        fhir_max_retries=0, fhir_connect_timeout=1, rate_limit_per_minute=0)
    app = create_app(load_settings(config, env={}))
    app.extensions["lbp_auth"].clock = clock
    store = app.extensions["lbp_store"]
    for service_id, uuids in STUB_CARDS.items():
        store.record_call(CallRecord(service_id, SERVICES[service_id].hook, "captured-stub", None,
                                     [{"uuid": u} for u in uuids], client_issuer=SANDBOX_ISSUER))
    return serve_app(app)


@pytest.fixture
def service(tmp_path, clock, serve_app):
    return sandbox_service(tmp_path, clock, serve_app)


def replay(service, request: dict, clock: FrozenClock, token: str | None = None) -> requests.Response:
    """Send a captured request as the sandbox sent it, with the clock at the token's iat."""
    token = token or token_of(request)
    clock.now = request["jwt_decoded"]["payload"]["iat"]
    headers = {k: v for k, v in request["headers"].items() if k != "host"}
    headers["authorization"] = f"Bearer {token}"
    return requests.request(request["method"], service.base_url + request["path"], headers=headers,
                            data=request["body_raw"].encode() if request["body_raw"] else None, timeout=60)


def reason_logged(caplog, reason: str) -> bool:
    return any(f"reason={reason}" in r.getMessage() for r in caplog.records if r.name == "lbp_redflags.auth")


@pytest.fixture(autouse=True)
def _auth_log(caplog):
    caplog.set_level(logging.INFO, logger="lbp_redflags")


@pytest.mark.parametrize("name", CALLS)
def test_sandbox_request_with_its_real_jwt_is_accepted(service, clock, name):
    response = replay(service, captured(name), clock)
    assert response.status_code == 200, response.text


def test_sandbox_token_is_accepted_a_moment_before_its_iat(service, clock):
    # The sandbox rounds iat up: it is often a fraction of a second ahead of the receiver's clock.
    request = captured("patient-view")
    clock.now = request["jwt_decoded"]["payload"]["iat"] - 0.25
    headers = {"Authorization": request["headers"]["authorization"], "Content-Type": "application/json"}
    response = requests.post(service.base_url + request["path"], data=request["body_raw"].encode(),
                             headers=headers, timeout=60)
    assert response.status_code == 200, response.text


def test_sandbox_request_sent_twice_is_a_replay(service, clock, caplog):
    request = captured("discovery")
    assert replay(service, request, clock).status_code == 200
    assert replay(service, request, clock).status_code == 401
    assert reason_logged(caplog, "replay (jti already used)")


def test_sandbox_token_with_a_changed_payload_is_refused(service, clock, caplog):
    request = captured("discovery")
    header, payload, signature = token_of(request).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["exp"] += 3600  # try to stretch its life
    forged = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).rstrip(b"=").decode()
    response = replay(service, request, clock, f"{header}.{forged}.{signature}")
    assert response.status_code == 401
    assert reason_logged(caplog, "bad signature")


def test_sandbox_token_with_a_changed_signature_is_refused(service, clock, caplog):
    request = captured("patient-view")
    header, payload, signature = token_of(request).split(".")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    response = replay(service, request, clock, f"{header}.{payload}.{flipped}")
    assert response.status_code == 401
    assert reason_logged(caplog, "bad signature")


def test_sandbox_token_used_on_another_endpoint_is_refused(service, clock, caplog):
    discovery_token = token_of(captured("discovery"))
    response = replay(service, captured("patient-view"), clock, discovery_token)
    assert response.status_code == 401
    assert reason_logged(caplog, "wrong audience")


def test_sandbox_token_is_refused_once_expired(service, clock, caplog):
    request = captured("discovery")
    payload = request["jwt_decoded"]["payload"]
    headers = {"Authorization": request["headers"]["authorization"]}
    clock.now = payload["exp"] + 61  # past the 60 s leeway
    assert requests.get(service.base_url + "/cds-services", headers=headers, timeout=30).status_code == 401
    assert reason_logged(caplog, "expired")


def test_sandbox_jku_must_be_on_the_clients_allow_list(tmp_path, clock, serve_app, caplog):
    service = sandbox_service(tmp_path, clock, serve_app, jku_allowed=())
    assert replay(service, captured("discovery"), clock).status_code == 401
    assert reason_logged(caplog, "jku not allowed")


@pytest.mark.parametrize("name", ["preflight-discovery", "preflight-service-call"])
def test_sandbox_cors_preflight_needs_no_token(service, name):
    request = captured(name)
    headers = {k: v for k, v in request["headers"].items() if k != "host"}
    response = requests.options(service.base_url + request["path"], headers=headers, timeout=30)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] in ("*", headers["origin"])
    assert "authorization" in response.headers["Access-Control-Allow-Headers"].lower()
