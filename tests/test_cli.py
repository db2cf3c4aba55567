"""The lbp-redflags command: serve refuses non-loopback without auth; demo prints cards at every tier."""

import subprocess
import sys

import pytest

from cds_service.cli import main
from cds_service.network import is_loopback


def run_cli(*args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "cds_service.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::"])
def test_serve_refuses_a_non_loopback_address_without_authentication(host):
    result = run_cli("serve", "--host", host, "--port", "8099")
    assert result.returncode == 2
    assert "loopback" in result.stderr and "authentication" in result.stderr


@pytest.mark.parametrize("host,expected", [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                           ("0.0.0.0", False), ("10.0.0.1", False)])
def test_loopback_detection(host, expected):
    assert is_loopback(host) is expected


def test_serve_reports_a_bad_configuration_clearly(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("port = 'x'\n")
    assert main(["serve", "--config", str(bad)]) == 2
    assert "port" in capsys.readouterr().err


def test_demo_prints_cards_at_every_tier():
    result = run_cli("demo")
    assert result.returncode == 0, result.stderr
    for tier in ("emergency", "imaging", "consider", "none"):
        assert f"tier: {tier}" in result.stdout
    assert "CRITICAL" in result.stdout and "WARNING" in result.stdout
    assert "no card" in result.stdout


def test_service_started_by_serve_answers_discovery_over_a_real_socket(service):
    import requests

    response = requests.get(f"{service.base_url}/cds-services", timeout=10)
    assert response.status_code == 200
    assert len(response.json()["services"]) == 4
