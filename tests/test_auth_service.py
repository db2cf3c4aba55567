"""Authentication in the real service (gunicorn, two worker processes, a configuration file).

The replay cache lives in the database: a token accepted by one worker is refused by the other.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from auth_tokens import Issuer, jwks, make_key, write_config

PUBLIC = "https://cds.example.test"
EHR = "https://ehr.example.test"


@pytest.fixture(scope="module")
def ehr_key():
    return make_key("ES384", kid="ehr-service-key")


@pytest.fixture(scope="module")
def authenticated_service(tmp_path_factory, start_service, ehr_key):
    folder = tmp_path_factory.mktemp("auth-config")
    (folder / "ehr-jwks.json").write_text(json.dumps(jwks(ehr_key)))
    config = write_config(folder / "lbp.toml", [{"issuer": EHR, "jwks_file": "ehr-jwks.json"}],
                          public_base_url=PUBLIC, rate_limit_per_minute=0)
    return start_service(config=str(config))


def discovery(service, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(service.base_url + "/cds-services", headers=headers, timeout=30)


def pids(log: str, kind: str) -> set[int]:
    return {int(p) for p in re.findall(rf"{kind}: GET /cds-services .*?pid=(\d+)", log)}


def test_the_service_started_from_a_configuration_file_requires_a_token(authenticated_service, ehr_key):
    assert discovery(authenticated_service, None).status_code == 401
    token = Issuer(EHR, ehr_key, PUBLIC).token("/cds-services")
    assert discovery(authenticated_service, token).status_code == 200
    assert requests.get(authenticated_service.base_url + "/healthz", timeout=10).status_code == 200


def test_a_jti_accepted_by_one_worker_is_refused_by_the_other(authenticated_service, ehr_key):
    service = authenticated_service
    token = Issuer(EHR, ehr_key, PUBLIC).token("/cds-services")
    before = len(service.log())
    assert discovery(service, token).status_code == 200
    accepted_by = pids(service.log()[before:], "authenticated")
    assert len(accepted_by) == 1

    refused_by: set[int] = set()
    with ThreadPoolExecutor(8) as pool:
        for _ in range(25):  # bursts on fresh connections until the other worker has answered
            statuses = list(pool.map(lambda _: discovery(service, token).status_code, range(8)))
            assert statuses == [401] * 8
            refused_by = pids(service.log()[before:], "authentication refused")
            if refused_by - accepted_by:
                break
    assert refused_by - accepted_by, f"only worker {accepted_by} answered; cannot show the cross-worker case"
    assert "reason=replay (jti already used)" in service.log()[before:]


def test_the_service_log_names_the_reason_of_a_401(authenticated_service, ehr_key):
    service = authenticated_service
    before = len(service.log())
    expired = Issuer(EHR, ehr_key, PUBLIC, clock=lambda: 1_700_000_000).token("/cds-services")
    assert discovery(service, expired).status_code == 401
    wrong_audience = Issuer(EHR, ehr_key, "https://elsewhere.example").token("/cds-services")
    assert discovery(service, wrong_audience).status_code == 401
    log = service.log()[before:]
    assert "reason=expired" in log and "reason=wrong audience" in log
    assert expired not in log and wrong_audience not in log
