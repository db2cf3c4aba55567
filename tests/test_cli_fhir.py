"""Integrator commands against the real FHIR test server: load-fhir, then check."""

import subprocess
import sys


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "cds_service.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_load_fhir_stores_an_example_patient_and_check_prints_its_cards(fhir_server):
    loaded = cli("load-fhir", fhir_server.base_url, "03-breast-cancer-history.json")
    assert loaded.returncode == 0, loaded.stderr
    assert "all stored" in loaded.stdout
    checked = cli("check", "--fhir", fhir_server.base_url, "--patient", "demo-breast")
    assert checked.returncode == 0, checked.stderr
    assert "tier: imaging" in checked.stdout and "cancer-history" in checked.stdout


def test_check_reports_a_missing_patient_as_an_error(fhir_server):
    checked = cli("check", "--fhir", fhir_server.base_url, "--patient", "nobody-here")
    assert checked.returncode == 1
    assert "412" in checked.stderr


def test_load_fhir_reports_an_unreachable_server():
    loaded = cli("load-fhir", "http://127.0.0.1:9/fhir", "03-breast-cancer-history.json")
    assert loaded.returncode == 1 and "cannot reach" in loaded.stderr
