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


def _serve(args: list[str], env: dict[str, str], cwd, wait_for: str, timeout: float = 30):
    """Start `serve`, return (process, output so far) once `wait_for` is printed or it exits."""
    import os
    import time

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LBP_")}
    full_env.update({"LBP_DATABASE_URL": f"sqlite:///{cwd}/serve.db", "LBP_WORKERS": "1"}, **env)
    log = open(cwd / "serve.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", "cds_service.cli", "serve", *args], stdout=log,
                               stderr=subprocess.STDOUT, env=full_env, cwd=cwd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if wait_for in (cwd / "serve.log").read_text():
            break
        time.sleep(0.1)
    return process, (cwd / "serve.log").read_text()


def _stop(process) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()


def _answers_discovery(port: int) -> bool:
    import requests

    return requests.get(f"http://127.0.0.1:{port}/cds-services", timeout=5).status_code == 200


def test_serve_binds_the_port_of_the_configuration_file(tmp_path):
    from conftest import free_port

    port = free_port()
    config = tmp_path / "lbp.toml"
    config.write_text(f"port = {port}\n[auth]\nrequired = false\n")
    process, output = _serve(["--config", str(config)], {}, tmp_path, "serving")
    try:
        assert f"127.0.0.1:{port}/cds-services" in output and _answers_discovery(port)
    finally:
        _stop(process)


def test_serve_binds_the_port_of_lbp_port(tmp_path):
    from conftest import free_port

    port = free_port()
    process, output = _serve([], {"LBP_PORT": str(port)}, tmp_path, "serving")
    try:
        assert f"127.0.0.1:{port}/cds-services" in output and _answers_discovery(port)
    finally:
        _stop(process)


def test_serve_says_it_runs_the_local_profile_without_a_file(tmp_path):
    from conftest import free_port

    process, output = _serve(["--port", str(free_port())], {}, tmp_path, "serving")
    _stop(process)
    assert "local profile" in output


def test_serve_prints_serving_only_once_bound(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process, _ = _serve(["--port", str(port)], {}, tmp_path, "serving", timeout=15)
        try:
            process.wait(60)
        finally:
            if process.poll() is None:
                _stop(process)
    output = (tmp_path / "serve.log").read_text()
    assert process.returncode != 0
    assert "serving" not in output


def test_serve_refuses_required_authentication_without_clients(tmp_path):
    config = tmp_path / "lbp.toml"
    config.write_text("port = 8099\n")
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    assert "auth.clients" in result.stderr and "public_base_url" in result.stderr
