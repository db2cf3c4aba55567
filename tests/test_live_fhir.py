"""Opt-in: the bundled example patients on a real FHIR R4 server, through the command line.

Skipped unless LBP_TEST_LIVE_FHIR_URL names a FHIR R4 base URL, e.g.

    LBP_TEST_LIVE_FHIR_URL=https://hapi.fhir.org/baseR4 .venv/bin/pytest tests/test_live_fhir.py

(LBP_TEST_LIVE_FHIR_TOKEN, when set, is sent as the bearer token.) The examples are stored with
`lbp-redflags load-fhir URL FILE...` under ids prefixed for this run, so runs against a shared
public server do not collide, then `lbp-redflags check --fhir URL --patient ID` must print the
tier each example was written for.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cds_service.example_patients import HERE as EXAMPLES_DIR

LIVE_URL = os.environ.get("LBP_TEST_LIVE_FHIR_URL", "").strip()
LIVE_TOKEN = os.environ.get("LBP_TEST_LIVE_FHIR_TOKEN", "").strip() or None

pytestmark = pytest.mark.skipif(not LIVE_URL,
                                reason="set LBP_TEST_LIVE_FHIR_URL to run against a live FHIR server")
RELATIVE_REFERENCE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]+)$")

# What `check` (patient-view, or encounter-start with the example's encounter) must print for each
# example: its tier, or None for "no card". The order examples are checked as a chart view.
EXPECTED = {
    "01-cauda-equina.json": "emergency",
    "02-prostate-cancer-new-numbness.json": "emergency",
    "03-breast-cancer-history.json": "imaging",
    "04-age-and-mild-esr.json": "consider",
    "05-uncomplicated-back-pain.json": None,
    "06-mri-ordered-without-red-flags.json": None,
    "07-ct-ordered-with-high-psa.json": "imaging",
}


def examples() -> list[dict]:
    return json.loads((EXAMPLES_DIR / "index.json").read_text(encoding="utf-8"))["examples"]


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LBP_")}
    env["LBP_FHIR_ALLOWED_SERVERS"] = LIVE_URL
    token = ["--token", LIVE_TOKEN] if LIVE_TOKEN else []
    return subprocess.run([sys.executable, "-m", "cds_service.cli", *args, *token], capture_output=True,
                          text=True, timeout=timeout, env=env)


def with_prefix(value, ids: dict[str, str]):
    """A JSON value with every id in `ids` (and every "Type/id" reference to one) renamed."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "id" and isinstance(item, str):
                out[key] = ids.get(item, item)
            elif key in ("reference", "url") and isinstance(item, str) and RELATIVE_REFERENCE.match(item):
                kind, ident = RELATIVE_REFERENCE.match(item).groups()
                out[key] = f"{kind}/{ids.get(ident, ident)}"
            else:
                out[key] = with_prefix(item, ids)
        return out
    if isinstance(value, list):
        return [with_prefix(item, ids) for item in value]
    return value


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> dict[str, str]:
    """Load every example under this run's ids; returns {original id: id on the live server}."""
    prefix = f"lbp-{uuid.uuid4().hex[:8]}"
    folder = tmp_path_factory.mktemp("live-examples")
    bundles = {example["file"]: json.loads((EXAMPLES_DIR / example["file"]).read_text(encoding="utf-8"))
               for example in examples()}
    ids = {entry["resource"]["id"]: f"{prefix}-{entry['resource']['id']}"
           for bundle in bundles.values() for entry in bundle["entry"]}
    files: list[Path] = []
    for name, bundle in bundles.items():
        files.append(folder / name)
        files[-1].write_text(json.dumps(with_prefix(bundle, ids)), encoding="utf-8")
    result = run_cli("load-fhir", LIVE_URL, *map(str, files))
    assert result.returncode == 0, f"load-fhir failed:\n{result.stdout}\n{result.stderr}"
    return ids


@pytest.mark.parametrize("example", examples(), ids=lambda e: e["file"].removesuffix(".json"))
def test_check_prints_the_expected_tier_for_each_loaded_example(loaded, example):
    bundle = json.loads((EXAMPLES_DIR / example["file"]).read_text(encoding="utf-8"))
    patient = next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    args = ["check", "--fhir", LIVE_URL, "--patient", loaded[patient]]
    if example["hook"] == "encounter-start":
        args += ["--hook", "encounter-start", "--encounter", loaded[example["encounterId"]]]
    result = run_cli(*args)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    tier = EXPECTED[example["file"]]
    expected = f"tier: {tier}" if tier else "no card"
    assert expected in result.stdout, f"{example['title']}: expected {expected!r}\n{result.stdout}"
