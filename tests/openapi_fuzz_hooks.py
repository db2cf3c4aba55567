"""Schemathesis hooks for the OpenAPI fuzz (tests/test_openapi_fuzz.py): some generated JSON bodies are
sent malformed or huge, as a hostile or broken client would send them.

Loaded by the schemathesis command through SCHEMATHESIS_HOOKS; never imported by the service.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import jwt
import schemathesis
from cryptography.hazmat.primitives import serialization
from hypothesis import strategies as st

# Sizes chosen against the limits the fuzzed service runs with (see FUZZ_LIMITS in the test).
HUGE_STRING = 5_000  # over max_string_length
HUGE_BODY = 70_000  # over max_content_length
MANY_ENTRIES = 60  # over max_bundle_entries


def _raw(body) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _with_member(raw: bytes, member: bytes) -> bytes:
    """The object with one more member first; a body that is not an object is replaced by one."""
    if not raw.startswith(b"{"):
        return b"{" + member + b"}"
    return b"{" + member + (b"}" if raw == b"{}" else b", " + raw[1:])


@st.composite
def _malformed(draw, body) -> bytes:
    raw = _raw(body)
    where = draw(st.integers(0, max(len(raw) - 1, 0)))
    kind = draw(st.sampled_from(["truncated", "stray", "bad-utf8", "duplicate-key", "nan", "deep", "long-number",
                                 "huge-string", "huge-key", "many-entries", "huge-body", "not-an-object"]))
    if kind == "truncated":
        return raw[:where]
    if kind == "stray":
        return raw[:where] + draw(st.sampled_from([b",", b"}", b"]", b'"', b"\x00", b"\\", b":"])) + raw[where:]
    if kind == "bad-utf8":
        return raw[:where] + b"\xff\xfe" + raw[where:]
    if kind == "duplicate-key":
        return _with_member(raw, b'"hook": "a", "hook": "b"')
    if kind == "nan":
        return _with_member(raw, b'"hookInstance": NaN')
    if kind == "deep":
        depth = draw(st.sampled_from([17, 100, 5_000]))
        return b'{"context": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == "long-number":
        return b'{"hookInstance": ' + b"9" * 5_000 + b"}"
    if kind == "huge-string":
        return _with_member(raw, b'"lbp-pad": "' + b"a" * HUGE_STRING + b'"')
    if kind == "huge-key":
        return _with_member(raw, b'"' + b"k" * HUGE_STRING + b'": 1')
    if kind == "many-entries":
        entries = b", ".join([b'{"resource": {"resourceType": "Condition"}}'] * MANY_ENTRIES)
        return _with_member(raw, b'"lbp-pad": {"resourceType": "Bundle", "entry": [' + entries + b"]}")
    if kind == "huge-body":
        return b'{"extension": {"pad": "' + b" " * HUGE_BODY + b'"}}'
    return draw(st.sampled_from([b"[]", b"1", b'"x"', b"null", b"true"]))


@schemathesis.hook
def flatmap_body(context, body):
    """One body in four is sent broken; the rest as generated."""
    if isinstance(body, bytes):
        return st.just(body)
    return st.one_of(st.just(body), st.just(body), st.just(body), _malformed(body))


if os.environ.get("FUZZ_JWT_KEY_FILE"):  # authentication on: every request signed as a configured client

    @schemathesis.auth(refresh_interval=None)  # a fresh token (new jti, aud = the URL called) per request
    class CdsClientJwt:
        def __init__(self):
            self.key = serialization.load_pem_private_key(Path(os.environ["FUZZ_JWT_KEY_FILE"]).read_bytes(), None)

        def get(self, case, context):
            now = int(time.time())
            claims = {"iss": os.environ["FUZZ_JWT_ISSUER"], "jti": str(uuid.uuid4()), "iat": now, "exp": now + 300,
                      "aud": os.environ["FUZZ_JWT_PUBLIC_BASE_URL"].rstrip("/") + case.formatted_path}
            return jwt.encode(claims, self.key, algorithm="ES384", headers={"kid": os.environ["FUZZ_JWT_KID"]})

        def set(self, case, data, context):
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}
