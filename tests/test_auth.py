"""Authentication of CDS clients (issue 8): really signed JWTs, sent over real sockets to the app.

The app runs in-process on a loopback socket (tests/conftest.py AppServer) so a test can move its
clock; keys are generated at test time (tests/auth_tokens.py). Every refusal must be a bare 401
with WWW-Authenticate, and the log must name the reason.
"""

from __future__ import annotations

import json
import logging
import time

import pytest
import requests
from auth_tokens import Issuer, JwksServer, alg_none, forged_hs256, jwks, make_key, write_config
from conftest import today

from cds_service.app import create_app
from cds_service.cli import example_request
from cds_service.example_patients import examples
from cds_service.settings import SettingsError, load_settings

PUBLIC = "https://cds.example.test"
EHR = "https://ehr.example.test"
TENANTED = "https://tenanted.example.test"
ROTATING = "https://rotating.example.test"
ALGS = ("ES384", "RS384", "ES256", "RS256")
GENERIC_MESSAGE = "authentication required: send a valid CDS Hooks client JWT (Authorization: Bearer)"


class Clock:
    """Real time plus an offset a test may move."""

    def __init__(self):
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture(scope="module")
def keys():
    return {alg: make_key(alg, kid=f"ehr-{alg.lower()}") for alg in ALGS}


@pytest.fixture(scope="module")
def jwks_server():
    server = JwksServer()
    yield server
    server.stop()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def auth(tmp_path, keys, jwks_server, clock, serve_app):
    """An authenticating service: three clients (file keys; tenant-restricted; keys from a URL)."""
    (tmp_path / "ehr-jwks.json").write_text(json.dumps(jwks(*keys.values())))
    jwks_server.hits.clear()
    jwks_server.documents.clear()
    jwks_server.documents["/rotating.json"] = jwks(make_key("ES384", kid="rot-1"))
    config = write_config(tmp_path / "lbp.toml", [
        {"issuer": EHR, "jwks_file": "ehr-jwks.json", "jku_allowed": [jwks_server.url("/jku.json")]},
        {"issuer": TENANTED, "jwks_file": "ehr-jwks.json", "tenants": ["hospital-a", "hospital-b"]},
        {"issuer": ROTATING, "jwks_url": jwks_server.url("/rotating.json")},
    ], public_base_url=PUBLIC, database_url=f"sqlite:///{tmp_path / 'auth.db'}", rate_limit_per_minute=0,
        fhir={"allow_http": True, "allow_private_networks": True})  # the JWK Set server is on loopback
    settings = load_settings(config, env={})
    app = create_app(settings)
    app.extensions["lbp_auth"].clock = clock
    server = serve_app(app)
    return server


def issuer(keys, clock, alg="ES384", iss=EHR) -> Issuer:
    return Issuer(iss, keys[alg], PUBLIC, clock=clock)


def get(server, token: str | None, path: str = "/cds-services", **headers) -> requests.Response:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.get(server.base_url + path, headers=headers, timeout=30)


def assert_refused(response: requests.Response, caplog=None, reason: str | None = None) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json() == {"error": {"status": 401, "code": "unauthorized", "message": GENERIC_MESSAGE}}
    if reason is not None:
        refusals = [r.getMessage() for r in caplog.records if r.name == "lbp_redflags.auth"]
        assert any(f"reason={reason}" in line for line in refusals), refusals


@pytest.fixture(autouse=True)
def _auth_log(caplog):
    caplog.set_level(logging.INFO, logger="lbp_redflags")


# ---------------------------------------------------------------- accepted


@pytest.mark.parametrize("alg", ALGS)
def test_discovery_accepts_a_token_signed_with_each_asymmetric_algorithm(auth, keys, clock, alg):
    response = get(auth, issuer(keys, clock, alg).token("/cds-services"))
    assert response.status_code == 200, response.text
    assert response.json()["services"]


def test_hook_call_and_feedback_with_their_own_audiences_are_accepted(auth, keys, clock):
    client = issuer(keys, clock, "RS384")
    example = next(e for e in examples(today()) if e["hook"] == "patient-view")
    service_id, body = example_request(example)
    path = f"/cds-services/{service_id}"
    response = requests.post(auth.base_url + path, json=body, timeout=60,
                             headers={"Authorization": f"Bearer {client.token(path)}"})
    assert response.status_code == 200, response.text
    card = response.json()["cards"][0]
    feedback = {"feedback": [{"card": card["uuid"], "outcome": "accepted", "acceptedSuggestions": [],
                              "outcomeTimestamp": "2026-01-01T00:00:00Z"}]}
    response = requests.post(auth.base_url + path + "/feedback", json=feedback, timeout=30,
                             headers={"Authorization": f"Bearer {client.token(path + '/feedback')}"})
    assert response.status_code == 200, response.text


def test_audience_may_be_an_array_holding_the_url_called(auth, keys, clock):
    token = issuer(keys, clock).token("/cds-services", aud=["https://other.example", PUBLIC + "/cds-services"])
    assert get(auth, token).status_code == 200


def test_iat_slightly_in_the_future_is_within_the_leeway(auth, keys, clock):
    # The public sandbox rounds iat up: it arrives a fraction of a second ahead.
    token = issuer(keys, clock).token("/cds-services", iat=int(clock()) + 5)
    assert get(auth, token).status_code == 200


def test_expired_within_the_leeway_is_accepted(auth, keys, clock):
    token = issuer(keys, clock).token("/cds-services", exp=int(clock()) - 30)
    assert get(auth, token).status_code == 200


def test_nbf_in_the_past_is_accepted(auth, keys, clock):
    token = issuer(keys, clock).token("/cds-services", nbf=int(clock()) - 10)
    assert get(auth, token).status_code == 200


def test_an_allowed_tenant_is_accepted(auth, keys, clock):
    token = issuer(keys, clock, iss=TENANTED).token("/cds-services", tenant="hospital-b")
    assert get(auth, token).status_code == 200


# ---------------------------------------------------------------- refused, with the reason in the log


def test_missing_authorization_header_is_refused(auth, caplog):
    response = get(auth, None)
    assert_refused(response, caplog, "missing Authorization header")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="cds-services"'


def test_other_schemes_and_garbage_are_refused(auth, caplog):
    assert_refused(get(auth, None, Authorization="Basic dXNlcjpwYXNz"), caplog, "not a Bearer token")
    assert_refused(get(auth, "not.a.jwt"), caplog, "malformed token")
    assert_refused(get(auth, "x" * 20_000), caplog, "token too long")


def test_hook_call_without_token_is_refused_before_the_body_is_read(auth, caplog):
    response = requests.post(auth.base_url + "/cds-services/lbp-patient-view", data=b"{not json", timeout=30,
                             headers={"Content-Type": "application/json"})
    assert_refused(response, caplog, "missing Authorization header")


def test_unknown_service_paths_also_need_a_token(auth, caplog):
    assert_refused(get(auth, None, "/cds-services/no-such-service"), caplog)


def test_expired_token_is_refused(auth, keys, clock, caplog):
    token = issuer(keys, clock).token("/cds-services", iat=int(clock()) - 600, exp=int(clock()) - 120)
    response = get(auth, token)
    assert_refused(response, caplog, "expired")
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_token_not_yet_valid_by_nbf_is_refused(auth, keys, clock, caplog):
    token = issuer(keys, clock).token("/cds-services", nbf=int(clock()) + 120)
    assert_refused(get(auth, token), caplog, "not yet valid (nbf)")


def test_token_issued_in_the_future_beyond_the_leeway_is_refused(auth, keys, clock, caplog):
    token = issuer(keys, clock).token("/cds-services", iat=int(clock()) + 120, exp=int(clock()) + 400)
    assert_refused(get(auth, token), caplog, "not yet valid (iat in the future)")


def test_token_valid_for_more_than_an_hour_is_refused(auth, keys, clock, caplog):
    token = issuer(keys, clock).token("/cds-services", exp=int(clock()) + 86_400)
    assert_refused(get(auth, token), caplog, "exp more than 3600 s ahead")


@pytest.mark.parametrize("aud", [
    PUBLIC + "/cds-services/lbp-patient-view",  # another endpoint of this service
    "https://attacker.example/cds-services",  # another service
    PUBLIC + "/cds-services/",  # not the exact URL
])
def test_wrong_audience_is_refused(auth, keys, clock, caplog, aud):
    assert_refused(get(auth, issuer(keys, clock).token("/cds-services", aud=aud)), caplog, "wrong audience")


def test_audience_is_the_public_url_not_the_address_the_socket_saw(auth, keys, clock, caplog):
    token = Issuer(EHR, keys["ES384"], auth.base_url, clock=clock).token("/cds-services")
    assert_refused(get(auth, token), caplog, "wrong audience")


def test_unknown_issuer_is_refused(auth, keys, clock, caplog):
    response = get(auth, issuer(keys, clock, iss="https://stranger.example").token("/cds-services"))
    assert_refused(response, caplog, "unknown issuer")


def test_tampered_payload_is_refused(auth, keys, clock, caplog):
    client = issuer(keys, clock)
    good = client.token("/cds-services")
    other = client.token("/cds-services", iss=EHR, tenant="x")
    header, _, signature = good.split(".")
    assert_refused(get(auth, f"{header}.{other.split('.')[1]}.{signature}"), caplog, "bad signature")


def test_alg_none_is_refused(auth, keys, clock, caplog):
    client = issuer(keys, clock)
    token = alg_none(client.header(), client.claims("/cds-services"))
    assert_refused(get(auth, token), caplog, "alg not allowed")


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_hs256_signed_with_the_public_key_is_refused(auth, keys, clock, caplog, alg):
    client = issuer(keys, clock, alg)
    token = forged_hs256(client.header(), client.claims("/cds-services"), keys[alg].public_pem())
    assert_refused(get(auth, token), caplog, "alg not allowed")


# (reason logged, token) for refusals decided by the header or the key
KEY_AND_HEADER_CASES = {
    "unknown kid": lambda client, keys: client.token("/cds-services", key=make_key("ES384", kid="not-in-the-set")),
    # a key not in the JWK Set, under the kid of one that is
    "bad signature": lambda client, keys: client.token(
        "/cds-services", key=make_key("ES384", kid=keys["ES384"].kid, slot="impostor")),
    # an ES256 signature under the kid of the P-384 key: the key decides the algorithm
    "alg does not match the key": lambda client, keys: client.token(
        "/cds-services", key=make_key("ES256", kid=keys["ES384"].kid, slot="p256")),
    "typ is not JWT": lambda client, keys: client.token("/cds-services", header={"typ": "at+jwt"}),
    "missing kid": lambda client, keys: client.token("/cds-services", header={"kid": None}),
}


@pytest.mark.parametrize("reason", KEY_AND_HEADER_CASES)
def test_token_is_refused_for_its_key_or_header(auth, keys, clock, caplog, reason):
    token = KEY_AND_HEADER_CASES[reason](issuer(keys, clock), keys)
    assert_refused(get(auth, token), caplog, reason)


@pytest.mark.parametrize("claim", ["jti", "exp", "iat", "aud", "iss"])
def test_missing_required_claim_is_refused(auth, keys, clock, caplog, claim):
    token = issuer(keys, clock).token("/cds-services", **{claim: None})
    assert_refused(get(auth, token), caplog, "unknown issuer" if claim == "iss" else f"missing claim {claim}")


def test_non_numeric_exp_is_refused(auth, keys, clock, caplog):
    token = issuer(keys, clock).token("/cds-services", exp="tomorrow")
    assert_refused(get(auth, token), caplog)


def test_replayed_jti_is_refused(auth, keys, clock, caplog):
    token = issuer(keys, clock).token("/cds-services")
    assert get(auth, token).status_code == 200
    assert_refused(get(auth, token), caplog, "replay (jti already used)")


def test_same_jti_in_a_new_token_is_still_a_replay(auth, keys, clock, caplog):
    client = issuer(keys, clock)
    assert get(auth, client.token("/cds-services", jti="fixed-id")).status_code == 200
    assert_refused(get(auth, client.token("/cds-services", jti="fixed-id", exp=int(clock()) + 200)), caplog,
                   "replay (jti already used)")


def test_wrong_tenant_is_refused(auth, keys, clock, caplog):
    token = issuer(keys, clock, iss=TENANTED).token("/cds-services", tenant="hospital-z")
    assert_refused(get(auth, token), caplog, "wrong tenant")


def test_missing_tenant_is_refused_when_the_client_lists_tenants(auth, keys, clock, caplog):
    token = issuer(keys, clock, iss=TENANTED).token("/cds-services")
    assert_refused(get(auth, token), caplog, "missing tenant")


def test_every_refusal_reads_the_same_to_the_client(auth, keys, clock):
    client = issuer(keys, clock)
    bodies = {get(auth, t).text for t in (
        client.token("/cds-services", exp=int(clock()) - 600, iat=int(clock()) - 900),
        client.token("/cds-services", key=make_key("ES384", kid="nope")),
        client.token("/cds-services", aud="https://x.example"),
    )}
    assert len(bodies) == 1


def test_the_log_never_holds_the_token(auth, keys, clock, caplog):
    token = issuer(keys, clock).token("/cds-services", aud="https://x.example")
    get(auth, token)
    assert all(part not in caplog.text for part in token.split("."))


# ---------------------------------------------------------------- jku and jwks_url


def test_jku_not_on_the_allow_list_is_refused_without_fetching_it(auth, keys, clock, caplog, jwks_server):
    jwks_server.documents["/evil.json"] = jwks(keys["ES384"])
    token = issuer(keys, clock).token("/cds-services", header={"jku": jwks_server.url("/evil.json")})
    assert_refused(get(auth, token), caplog, "jku not allowed")
    assert jwks_server.hits.get("/evil.json") is None


def test_allowed_jku_is_not_fetched_when_the_kid_is_configured(auth, keys, clock, jwks_server):
    token = issuer(keys, clock).token("/cds-services", header={"jku": jwks_server.url("/jku.json")})
    assert get(auth, token).status_code == 200
    assert jwks_server.hits.get("/jku.json") is None


def test_allowed_jku_is_fetched_for_a_kid_not_configured(auth, keys, clock, jwks_server):
    extra = make_key("RS384", kid="from-jku")
    jwks_server.documents["/jku.json"] = jwks(extra)
    token = issuer(keys, clock).token("/cds-services", key=extra, header={"jku": jwks_server.url("/jku.json")})
    assert get(auth, token).status_code == 200
    assert jwks_server.hits["/jku.json"] == 1


def test_jwks_url_keys_are_fetched_once_and_cached(auth, clock, jwks_server):
    client = Issuer(ROTATING, make_key("ES384", kid="rot-1"), PUBLIC, clock=clock)
    assert get(auth, client.token("/cds-services")).status_code == 200
    assert get(auth, client.token("/cds-services")).status_code == 200
    assert jwks_server.hits["/rotating.json"] == 1


def test_jwks_url_is_refetched_on_an_unknown_kid_at_most_once_a_minute(auth, clock, caplog, jwks_server):
    old, new = make_key("ES384", kid="rot-1"), make_key("RS384", kid="rot-2")
    assert get(auth, Issuer(ROTATING, old, PUBLIC, clock=clock).token("/cds-services")).status_code == 200
    jwks_server.documents["/rotating.json"] = jwks(old, new)  # the EHR rotates its keys
    rotated = Issuer(ROTATING, new, PUBLIC, clock=clock)

    assert_refused(get(auth, rotated.token("/cds-services")), caplog, "unknown kid")  # fetched just now
    for _ in range(3):  # a flood of unknown kids costs no fetch
        get(auth, rotated.token("/cds-services", key=make_key("ES384", kid="random-kid")))
    assert jwks_server.hits["/rotating.json"] == 1

    clock.offset += 61
    assert get(auth, rotated.token("/cds-services")).status_code == 200
    assert jwks_server.hits["/rotating.json"] == 2


def test_jwks_url_unreachable_refuses_calls_without_error(auth, clock, caplog, jwks_server):
    jwks_server.documents.clear()  # 404
    token = Issuer(ROTATING, make_key("ES384", kid="rot-1"), PUBLIC, clock=clock).token("/cds-services")
    assert_refused(get(auth, token), caplog, "unknown kid")
    assert "could not fetch JWK Set" in caplog.text


# ---------------------------------------------------------------- what stays public, and auth off


def test_health_and_cors_preflight_need_no_token(auth):
    assert requests.get(auth.base_url + "/healthz", timeout=10).status_code == 200
    preflight = requests.options(auth.base_url + "/cds-services/lbp-patient-view", timeout=10, headers={
        "Origin": "https://sandbox.cds-hooks.org", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.status_code == 200
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()


@pytest.mark.parametrize("path", ["/readyz", "/openapi.json"])
def test_paths_outside_the_cds_api_never_ask_for_a_token(auth, path):
    assert requests.get(auth.base_url + path, timeout=10).status_code != 401


def test_a_refusal_carries_cors_headers_so_a_browser_client_can_read_it(auth):
    response = get(auth, None, Origin="https://sandbox.cds-hooks.org")
    assert response.status_code == 401
    assert response.headers.get("Access-Control-Allow-Origin")


def with_caller_route(app) -> dict:
    """Add GET /cds-services/_caller, which records flask.g.cds_client and g.tenant in the dict returned."""
    seen: dict = {}

    @app.get("/cds-services/_caller")
    def caller():
        from flask import g
        seen.update(client=g.cds_client, tenant=g.tenant)
        return {}

    return seen


def test_the_caller_is_on_flask_g_for_the_outbound_guard_and_the_rate_limiter(tmp_path, keys, clock, serve_app):
    (tmp_path / "jwks.json").write_text(json.dumps(jwks(keys["ES384"])))
    config = write_config(tmp_path / "lbp.toml", [
        {"issuer": TENANTED, "jwks_file": "jwks.json", "tenants": ["hospital-a"],
         "fhir_servers": ["https://fhir.hospital-a.example/r4"]}],
        public_base_url=PUBLIC, database_url=f"sqlite:///{tmp_path / 'g.db'}")
    app = create_app(load_settings(config, env={}))
    seen = with_caller_route(app)
    server = serve_app(app)
    token = issuer(keys, clock, iss=TENANTED).token("/cds-services/_caller", tenant="hospital-a")
    assert get(server, token, "/cds-services/_caller").status_code == 200
    assert seen["client"].issuer == TENANTED
    assert seen["client"].fhir_servers == ("https://fhir.hospital-a.example/r4",)
    assert seen["tenant"] == "hospital-a"


def test_with_auth_off_a_token_sent_anyway_is_ignored(tmp_path, serve_app):
    app = create_app(load_settings(env={}, database_url=f"sqlite:///{tmp_path / 'off.db'}"))
    seen = with_caller_route(app)
    server = serve_app(app)
    assert get(server, "garbage.not.a-jwt").status_code == 200
    assert get(server, "garbage.not.a-jwt", "/cds-services/_caller").status_code == 200
    assert seen == {"client": None, "tenant": None}


def test_replay_cache_unavailable_fails_closed_with_503(auth, keys, clock):
    from cds_service.store import seen_tokens

    seen_tokens.drop(auth.app.extensions["lbp_store"].engine)
    response = get(auth, issuer(keys, clock).token("/cds-services"))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service-unavailable"


# ---------------------------------------------------------------- configuration of keys


def test_an_unreadable_jwks_file_stops_the_service_naming_the_setting(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    config = write_config(tmp_path / "lbp.toml", [{"issuer": EHR, "jwks_file": "broken.json"}],
                          public_base_url=PUBLIC, database_url=f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(SettingsError, match=r"auth\.clients\[0\]\.jwks_file"):
        create_app(load_settings(config, env={}))


def test_private_members_of_a_jwks_are_never_used(tmp_path, keys):
    from cds_service.auth import public_keys

    private = {**keys["ES384"].public_jwk(), "d": "AAAA"}
    assert "d" not in public_keys({"keys": [private]})[keys["ES384"].kid]


def test_jwk_sets_go_through_the_outbound_guard(tmp_path, keys, clock, caplog, jwks_server, serve_app):
    # A deployment (no [fhir] section): loopback and link-local JWK Set URLs are refused, unconnected.
    jwks_server.hits.clear()
    jwks_server.documents["/rotating.json"] = jwks(make_key("ES384", kid="rot-1"))
    metadata = "http://169.254.169.254/latest/jwks.json"
    (tmp_path / "ehr-jwks.json").write_text(json.dumps(jwks(keys["ES384"])))
    config = write_config(tmp_path / "lbp.toml", [
        {"issuer": ROTATING, "jwks_url": jwks_server.url("/rotating.json")},
        {"issuer": EHR, "jwks_file": "ehr-jwks.json", "jku_allowed": [metadata]},
    ], public_base_url=PUBLIC, database_url=f"sqlite:///{tmp_path / 'guard.db'}", rate_limit_per_minute=0)
    server = serve_app(create_app(load_settings(config, env={})))

    token = Issuer(ROTATING, make_key("ES384", kid="rot-1"), PUBLIC, clock=clock).token("/cds-services")
    assert_refused(get(server, token), caplog, "unknown kid")
    token = issuer(keys, clock).token("/cds-services", key=make_key("ES384", kid="elsewhere"),
                                      header={"jku": metadata})
    assert_refused(get(server, token), caplog, "unknown kid")
    assert jwks_server.hits == {}
    assert caplog.text.count("could not fetch JWK Set") == 2


def test_the_signing_clients_fhir_servers_decide_which_fhir_server_may_be_named(tmp_path, keys, clock, serve_app,
                                                                                  connect_guard):
    (tmp_path / "jwks.json").write_text(json.dumps(jwks(keys["ES384"])))
    config = write_config(tmp_path / "lbp.toml", [
        {"issuer": "https://ehr-a.example", "jwks_file": "jwks.json", "fhir_servers": ["https://fhir-a.example/r4"]},
        {"issuer": "https://ehr-b.example", "jwks_file": "jwks.json", "fhir_servers": ["https://fhir-b.example/r4"]},
    ], public_base_url=PUBLIC, database_url=f"sqlite:///{tmp_path / 'servers.db'}", rate_limit_per_minute=0)
    app = create_app(load_settings(config, env={}))
    app.extensions["lbp_dns_resolver"] = lambda host, port: ["93.184.216.34"]  # a public address; never called
    server = serve_app(app)
    example = next(e for e in examples(today()) if e["hook"] == "patient-view")
    service_id, body = example_request(example)  # complete prefetch: nothing to fetch
    path = f"/cds-services/{service_id}"

    def call(iss: str, fhir_server: str) -> requests.Response:
        token = Issuer(iss, keys["ES384"], PUBLIC, clock=clock).token(path)
        return requests.post(server.base_url + path, json={**body, "fhirServer": fhir_server}, timeout=60,
                             headers={"Authorization": f"Bearer {token}"})

    assert call("https://ehr-a.example", "https://fhir-a.example/r4").status_code == 200
    refused = call("https://ehr-a.example", "https://fhir-b.example/r4")
    assert refused.status_code == 403
    assert "issuer 'https://ehr-a.example'" in refused.json()["error"]["message"]
    assert call("https://ehr-b.example", "https://fhir-b.example/r4").status_code == 200
    assert connect_guard.attempts == []


def test_demo_with_a_configuration_file_requiring_auth_still_runs_in_process(tmp_path, keys, capsys):
    from cds_service.cli import main

    (tmp_path / "jwks.json").write_text(json.dumps(jwks(keys["ES384"])))
    config = write_config(tmp_path / "lbp.toml", [{"issuer": EHR, "jwks_file": "jwks.json"}], public_base_url=PUBLIC)
    assert main(["demo", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "error 401" not in out and "CRITICAL" in out


def test_a_jku_naming_the_clients_own_jwks_url_is_accepted(auth, clock, jwks_server):
    client = Issuer(ROTATING, make_key("ES384", kid="rot-1"), PUBLIC, clock=clock)
    token = client.token("/cds-services", header={"jku": jwks_server.url("/rotating.json")})
    assert get(auth, token).status_code == 200
    assert jwks_server.hits["/rotating.json"] == 1  # the configured set, fetched once
