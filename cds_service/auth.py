"""Authentication of CDS clients (CDS Hooks 2.0 "Trusting CDS Clients"): a signed JWT on every CDS call.

When ``auth.required`` is true, discovery, service and feedback calls (every path under
``/cds-services`` except CORS preflights) must carry ``Authorization: Bearer <JWT>``, signed with an
asymmetric key of a configured client. The token is checked with PyJWT; this module only decides
which key to use, which claims to require and what the clock says. Every refusal is a bare 401
(``WWW-Authenticate: Bearer``); the log says why, never with the token.

The caller is put on ``flask.g.cds_client`` (the :class:`AuthClient`, or None with authentication
off) and its tenant on ``g.tenant``: the outbound guard and the rate limiter read them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from flask import Flask, current_app, g, request
from sqlalchemy.exc import SQLAlchemyError

from . import outbound
from .errors import ServiceError
from .settings import AuthClient, Settings, SettingsError
from .store import Store

log = logging.getLogger("lbp_redflags.auth")

# Asymmetric signatures only: never "none", never HMAC (a public key must not become a shared secret).
ALGORITHMS = ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "jti")
MAX_TOKEN_LENGTH = 16 * 1024
MAX_JTI_LENGTH = 256
MAX_LIFETIME_SECONDS = 3600  # a token valid for longer is refused: a stolen one would stay usable
JWKS_MAX_BYTES = 256 * 1024
JWKS_TIMEOUT_SECONDS = 8.0  # the whole fetch: connect, wait and body
PUBLIC_KEY_MEMBERS = {"EC": ("kty", "crv", "x", "y", "kid", "alg", "use"),
                      "RSA": ("kty", "n", "e", "kid", "alg", "use")}
CHALLENGE = 'Bearer realm="cds-services"'


class AuthFailure(Exception):
    """Why a token was refused: for the log only, never for the client."""

    def __init__(self, reason: str, **facts: object):
        super().__init__(reason)
        self.reason = reason
        self.facts = facts


class KeyFetchError(Exception):
    pass


def fetch_jwks(url: str, settings: Settings) -> dict:
    """GET a JWK Set: the one outbound call of this module (jwks_url and allowed jku).

    Through the outbound guard (only this configured URL, fhir.allow_http and
    fhir.allow_private_networks apply, DNS pinned), with a timeout, no redirects, at most JWKS_MAX_BYTES.
    """
    policy = outbound.policy_for_urls(settings, [url], "auth.clients[].jwks_url or jku_allowed")
    try:
        data = outbound.get_json(url, policy, timeout=JWKS_TIMEOUT_SECONDS, max_bytes=JWKS_MAX_BYTES,
                                 headers={"Accept": "application/jwk-set+json, application/json"})
    except outbound.OutboundError as exc:
        raise KeyFetchError(str(exc)) from None
    if not isinstance(data, dict):
        raise KeyFetchError("not a JWK Set")
    return data


def public_keys(jwks: object) -> dict[str, dict]:
    """kid -> public JWK (EC or RSA signing keys only; private members dropped)."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise KeyFetchError("not a JWK Set (no 'keys' list)")
    keys = {}
    for jwk in jwks["keys"]:
        if not isinstance(jwk, dict) or jwk.get("kty") not in PUBLIC_KEY_MEMBERS:
            continue
        if not isinstance(jwk.get("kid"), str) or jwk.get("use", "sig") != "sig":
            continue
        keys[jwk["kid"]] = {k: jwk[k] for k in PUBLIC_KEY_MEMBERS[jwk["kty"]] if k in jwk}
    return keys


@dataclass
class _CachedSet:
    keys: dict[str, dict] = field(default_factory=dict)
    fetched_at: float | None = None  # last successful fetch
    tried_at: float | None = None  # last attempt, successful or not
    lock: threading.Lock = field(default_factory=threading.Lock)  # one fetch at a time per URL


class KeyRing:
    """The public keys of every client: from jwks_file (read at start), or jwks_url / allowed jku
    (fetched on first use, refetched when older than ``max_age`` or when a kid is unknown, but at most
    once per ``refresh_interval`` seconds per URL and worker)."""

    def __init__(self, clients: tuple[AuthClient, ...], clock: Callable[[], float],
                 fetch: Callable[[str], dict], refresh_interval: float = 60.0,
                 max_age: float = 3600.0):
        self.clock = clock
        self.fetch = fetch
        self.refresh_interval = refresh_interval
        self.max_age = max_age
        self._files = {c.issuer: self._read_file(i, c) for i, c in enumerate(clients) if c.jwks_file}
        self._cache: dict[str, _CachedSet] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _read_file(index: int, client: AuthClient) -> dict[str, dict]:
        try:
            keys = public_keys(json.loads(Path(client.jwks_file).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyFetchError) as exc:
            raise SettingsError(f"setting 'auth.clients[{index}].jwks_file' ({client.issuer}): cannot read a JWK "
                                f"Set from {client.jwks_file}: {exc.__class__.__name__}") from None
        if not keys:
            raise SettingsError(f"setting 'auth.clients[{index}].jwks_file' ({client.issuer}): "
                                f"{client.jwks_file} holds no EC or RSA signing key with a kid")
        return keys

    def key(self, client: AuthClient, kid: str, jku: str | None) -> dict | None:
        """The JWK for this kid: configured keys first, then an allowed jku (already checked by the caller)."""
        if client.jwks_file:
            found = self._files[client.issuer].get(kid)
        else:
            found = self._from_url(client.jwks_url, kid)
        if found is None and jku:
            found = self._from_url(jku, kid)
        return found

    def _from_url(self, url: str, kid: str) -> dict | None:
        with self._lock:
            cached = self._cache.setdefault(url, _CachedSet())
        with cached.lock:  # a slow JWK Set holds up its own client only
            now = self.clock()
            stale = cached.fetched_at is None or now - cached.fetched_at > self.max_age
            if (stale or kid not in cached.keys) and (
                    cached.tried_at is None or now - cached.tried_at >= self.refresh_interval):
                cached.tried_at = now
                try:
                    cached.keys = public_keys(self.fetch(url))
                    cached.fetched_at = now
                    log.info("fetched JWK Set %s: %d key(s)", url, len(cached.keys))
                except KeyFetchError as exc:  # keep the keys we had: the issuer's outage is not ours
                    log.warning("could not fetch JWK Set %s: %s", url, exc)
            return cached.keys.get(kid)


@dataclass(frozen=True)
class Caller:
    client: AuthClient
    tenant: str | None


def _verification_key(jwk: dict, alg: str) -> jwt.PyJWK:
    """The key bound to the header's alg, when the JWK is of the right kind for it."""
    if jwk.get("alg") not in (None, alg):
        raise AuthFailure("alg does not match the key", alg=alg)
    kind = "EC" if alg.startswith("ES") else "RSA"
    if jwk["kty"] != kind or (kind == "EC" and jwk.get("crv") != EC_CURVES[alg]):
        raise AuthFailure("alg does not match the key", alg=alg)
    try:
        return jwt.PyJWK(jwk, algorithm=alg)
    except jwt.PyJWTError:
        raise AuthFailure("unusable key in the JWK Set", alg=alg) from None


def _number(claims: dict, name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthFailure(f"claim {name} is not a number")
    return float(value)


class Authenticator:
    """Checks one request's bearer token against the configured clients."""

    def __init__(self, settings: Settings, store: Store, clock: Callable[[], float] = time.time,
                 refresh_interval: float = 60.0):
        self.settings = settings
        self.store = store
        self.clock = clock
        self.keys = KeyRing(settings.auth.clients, lambda: self.clock(), lambda url: fetch_jwks(url, settings),
                            refresh_interval)

    def audience(self, path: str) -> str:
        """The exact URL the client called, as it sees the service: public_base_url + path."""
        return self.settings.public_base_url.rstrip("/") + path

    def authenticate(self, authorization: str | None, audience: str) -> Caller:
        token = _bearer(authorization)
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthFailure("malformed token") from None
        alg, kid, jku = header.get("alg"), header.get("kid"), header.get("jku")
        if alg not in ALGORITHMS:
            raise AuthFailure("alg not allowed", alg=alg)
        if not isinstance(header.get("typ"), str) or header["typ"].upper() != "JWT":
            raise AuthFailure("typ is not JWT")
        if not isinstance(kid, str) or not kid:
            raise AuthFailure("missing kid")
        issuer = unverified.get("iss")
        client = self.settings.auth.client(issuer) if isinstance(issuer, str) else None
        if client is None:
            raise AuthFailure("unknown issuer", iss=issuer)
        if jku is not None and jku not in client.jku_allowed and not (client.jwks_url and jku == client.jwks_url):
            raise AuthFailure("jku not allowed", iss=issuer, jku=jku)
        jwk = self.keys.key(client, kid, jku)
        if jwk is None:
            raise AuthFailure("unknown kid", iss=issuer, kid=kid)
        claims = self._verified_claims(token, _verification_key(jwk, alg), alg, audience, client)
        self._check_times(claims)
        tenant = self._tenant(claims, client)
        self._remember(claims, client)
        return Caller(client, tenant)

    def _verified_claims(self, token: str, key: jwt.PyJWK, alg: str, audience: str, client: AuthClient) -> dict:
        facts = {"iss": client.issuer, "kid": key.key_id}
        try:
            return jwt.decode(token, key, algorithms=[alg], audience=audience, issuer=client.issuer,
                              options={"require": list(REQUIRED_CLAIMS), "verify_exp": False, "verify_nbf": False,
                                       "verify_iat": False, "enforce_minimum_key_length": True})
        except jwt.InvalidSignatureError:
            raise AuthFailure("bad signature", **facts) from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthFailure(f"missing claim {exc.claim}", **facts) from None
        except jwt.InvalidAudienceError:
            raise AuthFailure("wrong audience", **facts) from None
        except jwt.InvalidIssuerError:
            raise AuthFailure("unknown issuer", **facts) from None
        except jwt.PyJWTError as exc:
            raise AuthFailure(f"invalid token ({exc.__class__.__name__})", **facts) from None

    def _check_times(self, claims: dict) -> None:
        now, leeway = self.clock(), self.settings.auth.leeway_seconds
        facts = {"iss": claims["iss"]}
        exp, iat = _number(claims, "exp"), _number(claims, "iat")
        if now > exp + leeway:
            raise AuthFailure("expired", **facts)
        if iat > now + leeway:
            raise AuthFailure("not yet valid (iat in the future)", **facts)
        if "nbf" in claims and _number(claims, "nbf") > now + leeway:
            raise AuthFailure("not yet valid (nbf)", **facts)
        if exp > now + leeway + MAX_LIFETIME_SECONDS:
            raise AuthFailure(f"exp more than {MAX_LIFETIME_SECONDS} s ahead", **facts)

    @staticmethod
    def _tenant(claims: dict, client: AuthClient) -> str | None:
        tenant = claims.get("tenant")
        if tenant is not None and not isinstance(tenant, str):
            raise AuthFailure("tenant is not a string", iss=client.issuer)
        if client.tenants and tenant not in client.tenants:
            raise AuthFailure("wrong tenant" if tenant else "missing tenant", iss=client.issuer, tenant=tenant)
        return tenant

    def _remember(self, claims: dict, client: AuthClient) -> None:
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
            raise AuthFailure("jti is not a string of 1 to 256 characters", iss=client.issuer)
        keep_until = _number(claims, "exp") + self.settings.auth.leeway_seconds
        try:
            fresh = self.store.remember_jti(client.issuer, jti, keep_until, self.clock())
        except SQLAlchemyError as exc:
            log.error("replay cache unavailable (%s): refusing the call", exc.__class__.__name__)
            raise ServiceError(503, "the service cannot check tokens right now; try again shortly") from None
        if not fresh:
            raise AuthFailure("replay (jti already used)", iss=client.issuer)


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise AuthFailure("missing Authorization header")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthFailure("not a Bearer token")
    if len(token) > MAX_TOKEN_LENGTH:
        raise AuthFailure("token too long")
    return token.strip()


_UNSAFE = re.compile(r"[^A-Za-z0-9:/._\-@+=?&~%]")


def _shown(value: object) -> str:
    """A claim or header value fit for the log: printable, short, never a line break."""
    if not isinstance(value, str):
        return "-" if value is None else f"<{type(value).__name__}>"
    return _UNSAFE.sub("?", value[:120])


def requires_token(path: str, method: str) -> bool:
    """The CDS API (discovery, services, feedback); CORS preflights and health/readiness/OpenAPI are public."""
    return method != "OPTIONS" and (path == "/cds-services" or path.startswith("/cds-services/"))


def check_request() -> None:
    """before_request: authenticate CDS calls when auth.required; sets g.cds_client and g.tenant."""
    g.cds_client, g.tenant = None, None
    settings: Settings = current_app.config["LBP_SETTINGS"]
    if not settings.auth.required or not requires_token(request.path, request.method):
        return
    authenticator: Authenticator = current_app.extensions["lbp_auth"]
    try:
        caller = authenticator.authenticate(request.headers.get("Authorization"), authenticator.audience(request.path))
    except AuthFailure as failure:
        facts = " ".join(f"{k}={_shown(v)}" for k, v in failure.facts.items())
        log.warning("authentication refused: %s %s reason=%s %s pid=%d", request.method, request.path,
                    failure.reason, facts, os.getpid())
        challenge = CHALLENGE if failure.reason == "missing Authorization header" else \
            CHALLENGE + ', error="invalid_token"'
        raise ServiceError(401, "authentication required: send a valid CDS Hooks client JWT "
                                "(Authorization: Bearer)", headers={"WWW-Authenticate": challenge}) from None
    g.cds_client, g.tenant = caller.client, caller.tenant
    log.info("authenticated: %s %s iss=%s tenant=%s pid=%d", request.method, request.path,
             _shown(caller.client.issuer), _shown(caller.tenant), os.getpid())


def init_app(app: Flask, settings: Settings, store: Store) -> None:
    app.extensions["lbp_auth"] = Authenticator(settings, store)
    app.before_request(check_request)
