"""The running service (gunicorn, real socket) fuzzed from its own OpenAPI document with schemathesis.

Generated requests cover every documented operation: valid ones built from the schemas and the
documented example patients, schema-violating ones (wrong types, missing fields, boundary values,
wrong content types, undocumented methods), and, through tests/openapi_fuzz_hooks.py, malformed
and huge JSON. Every response must be documented, match its schema, and none may be a 5xx.

The service runs with small limits so that generated values reach them: once in the local profile
(authentication off), once configured with a client whose JWTs the hooks module signs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).parent

# Small enough that generated and mangled bodies reach each limit.
FUZZ_LIMITS = {"max_content_length": "65536", "max_string_length": "2048", "max_bundle_entries": "50",
               "max_draft_orders": "5", "max_json_depth": "16"}

# positive_data_acceptance is left out: a request valid against the schemas may still, rightly, be
# refused for what no schema says (412 without the Patient, 403 for a fhirServer not allowed, 404
# for feedback on a card never issued, 413 over a limit, 400 for a feedback time in the future).
CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance", "negative_data_rejection",
          "missing_required_header", "unsupported_method", "allow_header_conformance"]


def run_schemathesis(base_url: str, report: Path, workdir: Path, max_examples: int = 100,
                     phases: str = "examples,coverage,fuzzing", **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **env, "SCHEMATHESIS_HOOKS": "openapi_fuzz_hooks",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(TESTS / "openapi_fuzz.toml"),
        "run", f"{base_url}/openapi.json",
        "--checks", ",".join(CHECKS),
        "--phases", phases,
        "--max-examples", str(max_examples), "--seed", "20261130",
        "--workers", "1",  # generation is not thread-safe on Python 3.11 (AST recursion errors)
        "--generation-database", "none", "--no-shrink", "--continue-on-failure",
        "--request-timeout", "30", "--no-color",
        "--report", "har", "--report-har-path", str(report),
    ]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=workdir)


def results(run: subprocess.CompletedProcess, report: Path) -> tuple[list[dict], Counter]:
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    entries = json.loads(report.read_text(encoding="utf-8"))["log"]["entries"]
    return entries, Counter(entry["response"]["status"] for entry in entries)


def test_fuzzing_the_running_service_finds_no_5xx_and_no_undocumented_response(start_service, tmp_path):
    service = start_service(**FUZZ_LIMITS)
    report = tmp_path / "fuzz.har"
    run = run_schemathesis(service.base_url, report, tmp_path)  # its cache stays in tmp_path
    entries, statuses = results(run, report)
    assert len(entries) >= 1000, statuses
    assert not [s for s in statuses if s >= 500], statuses
    # The run reached the answers it is meant to exercise, the limits among them.
    assert {200, 400, 403, 404, 405, 412, 413, 415} <= set(statuses), statuses
    messages = " ".join(entry["response"]["content"].get("text", "") for entry in entries
                        if entry["response"]["status"] == 413)
    for setting in ("max_content_length", "max_string_length", "max_bundle_entries", "max_draft_orders"):
        assert setting in messages, setting
    malformed = 0
    for entry in entries:
        text = (entry["request"].get("postData") or {}).get("text")
        try:
            json.loads(text) if text else None
        except (ValueError, RecursionError):
            malformed += 1
    assert malformed >= 50, malformed
    print(f"fuzz: {len(entries)} requests, {malformed} malformed JSON, statuses {dict(sorted(statuses.items()))}")
    assert "Traceback" not in service.log()


def test_fuzzing_with_authentication_on_signs_every_call_and_documents_the_401s(start_service, tmp_path):
    """A shorter run as a configured client (ES384, fresh jti and exact aud per request): the same
    checks, plus schemathesis' own probes with no or a mangled Authorization header, which must be
    documented 401s."""
    from auth_tokens import jwks, make_key, write_config
    from cryptography.hazmat.primitives import serialization

    key = make_key("ES384", kid="fuzz-key")
    (tmp_path / "jwks.json").write_text(json.dumps(jwks(key)))
    key_file = tmp_path / "fuzz-key.pem"
    key_file.write_bytes(key.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    public, issuer = "https://cds.example.test", "https://ehr.example.test"
    config = write_config(tmp_path / "lbp.toml", [{"issuer": issuer, "jwks_file": "jwks.json"}],
                          public_base_url=public, rate_limit_per_minute=0,
                          **{name: int(value) for name, value in FUZZ_LIMITS.items()})
    service = start_service(config=str(config))
    report = tmp_path / "fuzz.har"
    run = run_schemathesis(service.base_url, report, tmp_path, max_examples=25, phases="examples,fuzzing",
                           FUZZ_JWT_KEY_FILE=str(key_file),
                           FUZZ_JWT_KID=key.kid, FUZZ_JWT_ISSUER=issuer, FUZZ_JWT_PUBLIC_BASE_URL=public)
    entries, statuses = results(run, report)
    assert not [s for s in statuses if s >= 500], statuses
    assert {200, 400, 401} <= set(statuses), statuses
    signed = sum(1 for e in entries if any(h["name"].lower() == "authorization" for h in e["request"]["headers"]))
    assert signed >= len(entries) // 2, (signed, len(entries))
    print(f"fuzz with authentication: {len(entries)} requests, {signed} signed, {dict(sorted(statuses.items()))}")
