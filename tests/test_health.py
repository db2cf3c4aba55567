"""/healthz and /readyz: public, and they say ok or not ready, nothing more."""

import logging
import shutil

from cds_service.app import create_app
from cds_service.settings import load_settings


def test_healthz_says_ok_and_nothing_else(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_readyz_says_ok_when_the_database_answers_and_the_configuration_is_valid(client):
    response = client.get("/readyz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_readyz_is_503_when_the_database_is_unreachable_and_logs_why(tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    app = create_app(load_settings(env={}, database_url=f"sqlite:///{data / 'store.db'}"))
    app.extensions["lbp_store"].engine.dispose()
    shutil.rmtree(data)  # the database file and its directory are gone
    caplog.set_level(logging.WARNING, logger="lbp_redflags")
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {"error": {"status": 503, "code": "service-unavailable", "message": "not ready"}}
    assert any("database unavailable" in r.getMessage() for r in caplog.records)


def test_readyz_is_503_when_the_configuration_could_not_serve(tmp_path):
    settings = load_settings(env={}, database_url=f"sqlite:///{tmp_path / 'store.db'}", auth_required=True)
    response = create_app(settings).test_client().get("/readyz")
    assert response.status_code == 503
    assert "auth" not in response.get_data(as_text=True)  # why is for the log, not for the caller


def test_health_endpoints_carry_no_data_over_a_real_socket(service):
    import requests

    for path in ("/healthz", "/readyz"):
        response = requests.get(service.base_url + path, timeout=10)
        assert response.status_code == 200 and response.json() == {"status": "ok"}
