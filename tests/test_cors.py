"""CORS: the sandbox calls from the browser; preflights are answered without a JWT."""

import pytest
from conftest import fixture_json

CAPTURED = "cds-hooks-spec/cds-hooks-sandbox/captured"


@pytest.mark.parametrize("name", ["preflight-discovery.json", "preflight-service-call.json"])
def test_captured_preflight_is_allowed(client, name):
    capture = fixture_json(f"{CAPTURED}/{name}")
    headers = {k: v for k, v in capture["headers"].items() if k != "host"}
    response = client.open(capture["path"], method="OPTIONS", headers=headers)
    assert response.status_code in (200, 204)
    assert response.headers["Access-Control-Allow-Origin"] in ("*", capture["headers"]["origin"])
    allowed = response.headers.get("Access-Control-Allow-Headers", "").lower()
    requested = capture["headers"].get("access-control-request-headers", "")
    for header in filter(None, (h.strip() for h in requested.lower().split(","))):
        assert header in allowed


def test_origin_outside_the_allow_list_gets_no_cors_headers():
    from cds_service.app import create_app
    from cds_service.settings import load_settings

    app = create_app(load_settings(env={}, database_url="sqlite://", cors_origins="https://ehr.example.org"))
    response = app.test_client().get("/cds-services", headers={"Origin": "https://evil.example.com"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_origin_on_the_allow_list_is_echoed():
    from cds_service.app import create_app
    from cds_service.settings import load_settings

    app = create_app(load_settings(env={}, database_url="sqlite://", cors_origins="https://ehr.example.org"))
    response = app.test_client().get("/cds-services", headers={"Origin": "https://ehr.example.org"})
    assert response.headers["Access-Control-Allow-Origin"] == "https://ehr.example.org"
