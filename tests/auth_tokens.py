"""CDS client JWTs for tests: keys generated at test time (never committed), tokens really signed.

    key = make_key("ES384")
    issuer = Issuer("https://ehr.example.test", key, "https://cds.example.test")
    token = issuer.token("/cds-services")                  # aud = public base URL + path
    requests.get(url, auth=issuer.auth(service_base_url)) # a fresh token per request
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import http.server
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}


@dataclass(frozen=True)
class SigningKey:
    alg: str
    kid: str
    private: object

    def public_jwk(self) -> dict:
        exporter = ECAlgorithm if self.alg.startswith("ES") else RSAAlgorithm
        return {**exporter.to_jwk(self.private.public_key(), as_dict=True), "kid": self.kid, "use": "sig",
                "alg": self.alg}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)


@functools.cache
def _private_key(alg: str, slot: str):
    """One key per (alg, slot) per test run: RSA generation is slow."""
    if alg in CURVES:
        return ec.generate_private_key(CURVES[alg]())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_key(alg: str, kid: str | None = None, slot: str = "") -> SigningKey:
    """A fresh signing key (per slot); kid defaults to a random uuid."""
    return SigningKey(alg, kid or str(uuid.uuid4()), _private_key(alg, slot or kid or "default"))


def jwks(*keys: SigningKey) -> dict:
    return {"keys": [k.public_jwk() for k in keys]}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict, claims: dict) -> str:
    """header.payload, base64url-encoded (the signing input)."""
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"


@dataclass
class Issuer:
    """A CDS client that signs its calls: iss, aud from the service's public base URL, jti, iat/exp."""

    iss: str
    key: SigningKey
    public_base_url: str
    lifetime: int = 300
    clock: object = time.time
    extra_header: dict = field(default_factory=dict)

    def claims(self, path: str, **overrides) -> dict:
        now = int(self.clock())
        claims = {"iss": self.iss, "aud": self.public_base_url.rstrip("/") + path, "exp": now + self.lifetime,
                  "iat": now, "jti": str(uuid.uuid4())}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}  # None drops a claim

    def header(self, **overrides) -> dict:
        header = {"alg": self.key.alg, "typ": "JWT", "kid": self.key.kid, **self.extra_header, **overrides}
        return {k: v for k, v in header.items() if v is not None}

    def token(self, path: str, *, key: SigningKey | None = None, header: dict | None = None, **claims) -> str:
        signing = key or self.key
        headers = self.header(**{"alg": signing.alg, "kid": signing.kid, **(header or {})})
        alg = headers.pop("alg")
        return jwt.encode(self.claims(path, **claims), signing.private, algorithm=alg, headers=headers)

    def auth(self, service_base_url: str) -> JwtAuth:
        return JwtAuth(self, service_base_url)


def forged_hs256(header: dict, claims: dict, secret: bytes) -> str:
    """Algorithm confusion: HS256 'signed' with a public key used as the HMAC secret."""
    signing_input = unsigned({**header, "alg": "HS256"}, claims)
    return f"{signing_input}.{b64url(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def alg_none(header: dict, claims: dict) -> str:
    return unsigned({**header, "alg": "none"}, claims) + "."


class JwtAuth(requests.auth.AuthBase):
    """requests auth: a fresh JWT for every request to the service, with aud = public base URL + path."""

    def __init__(self, issuer: Issuer, service_base_url: str):
        self.issuer = issuer
        self.service_base_url = service_base_url.rstrip("/")
        self.tokens: list[str] = []

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if request.url.startswith(self.service_base_url + "/"):
            token = self.issuer.token(urlsplit(request.url).path)
            self.tokens.append(token)
            request.headers["Authorization"] = f"Bearer {token}"
        return request


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def write_config(path: Path, clients: list[dict], *, fhir: dict | None = None, **top) -> Path:
    """A TOML configuration file with auth on and these [[auth.clients]]."""
    lines = [f"{k} = {toml_value(v)}" for k, v in top.items()]
    lines += ["[auth]", "required = true"]
    for client in clients:
        lines.append("[[auth.clients]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in client.items()]
    if fhir:
        lines.append("[fhir]")
        lines += [f"{k} = {toml_value(v)}" for k, v in fhir.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class JwksServer:
    """A loopback HTTP server publishing JWK Sets at paths, counting the GETs of each path."""

    def __init__(self):
        self.documents: dict[str, dict] = {}
        self.hits: dict[str, int] = {}
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                owner.hits[self.path] = owner.hits.get(self.path, 0) + 1
                document = owner.documents.get(self.path)
                body = json.dumps(document).encode() if document is not None else b"{}"
                self.send_response(200 if document is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
