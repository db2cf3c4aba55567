"""One frozen settings object: embedded defaults < TOML file < LBP_* environment < command-line flags.

Every key is documented in the README's configuration table. Scalar keys come from all four sources
(nested ones as ``LBP_AUTH_REQUIRED``, ``LBP_FHIR_ALLOW_HTTP``); lists of tables (``[[auth.clients]]``)
come from the file only.

Two profiles. With no configuration file the service runs the *local* profile: loopback only,
authentication off, plain-http and loopback FHIR servers allowed, no rate limit. Once a file is
given, authentication is required and plain-http / private-network FHIR servers are refused unless
the file (or the environment) says otherwise.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

ENV_PREFIX = "LBP_"


class SettingsError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


@dataclass(frozen=True)
class AuthClient:
    """One CDS client (an EHR) allowed to call: who signs its JWTs and which FHIR servers it may name."""

    issuer: str
    jwks_file: str = ""
    jwks_url: str = ""
    jku_allowed: tuple[str, ...] = ()
    fhir_servers: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()  # empty: no tenant restriction


@dataclass(frozen=True)
class AuthSettings:
    required: bool = False
    leeway_seconds: int = 60
    clients: tuple[AuthClient, ...] = ()

    def client(self, issuer: str) -> AuthClient | None:
        return next((c for c in self.clients if c.issuer == issuer), None)


@dataclass(frozen=True)
class FhirSettings:
    allow_http: bool = True  # plain-http fhirServer (local development and tests)
    allow_private_networks: bool = True  # loopback / private / link-local fhirServer


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 2
    threads: int = 4  # per worker: calls wait on FHIR servers and the database more than on the CPU
    graceful_timeout: int = 30  # seconds a stopping worker gets to finish the calls it is answering
    hook_deadline_seconds: float = 4.0  # one call, fetching included; below common EHR timeouts
    public_base_url: str = ""
    database_url: str = "sqlite:///lbp-redflags.db"
    cors_origins: tuple[str, ...] = ("*",)
    max_content_length: int = 32 * 1024 * 1024
    max_json_depth: int = 64
    max_bundle_entries: int = 20_000
    max_draft_orders: int = 100
    max_string_length: int = 4 * 1024 * 1024
    rate_limit_per_minute: int = 0  # per client and worker process; 0 = off
    admin_token: str = ""
    patient_key: str = ""
    migrate_on_start: bool = True
    silent_mode: bool = False
    disabled_tiers: tuple[str, ...] = ()
    disabled_flags: tuple[str, ...] = ()
    snooze_days: int = 30
    retention_days: int = 365
    fhir_allowed_servers: tuple[str, ...] = ("loopback",)
    fhir_connect_timeout: float = 3.05
    fhir_read_timeout: float = 10.0
    fhir_total_timeout: float = 20.0
    fhir_page_cap: int = 10
    fhir_page_size: int = 200
    fhir_max_retries: int = 2
    fhir_max_workers: int = 8
    max_notes: int = 20    # clinical notes read per call, newest first
    max_reports: int = 10  # imaging and pathology reports read per call, newest first
    terminology_server: str = ""
    terminology_timeout: float = 2.0
    terminology_cache_size: int = 20000
    log_level: str = "INFO"
    source_url: str = ""
    auth: AuthSettings = field(default_factory=AuthSettings)
    fhir: FhirSettings = field(default_factory=FhirSettings)
    config_file: str = ""  # the file read, if any: "" is the local profile

    @property
    def local_profile(self) -> bool:
        return not self.config_file


# Defaults that differ once a configuration file is given (a deployment, not a laptop).
CONFIGURED_DEFAULTS = {
    "auth.required": True,
    "fhir.allow_http": False,
    "fhir.allow_private_networks": False,
    "rate_limit_per_minute": 600,
}

_SECTIONS = {"auth": AuthSettings, "fhir": FhirSettings}
_LIST_OF_TABLES = {"auth.clients"}


def _scalar_keys() -> dict[str, Any]:
    """Dotted key -> type, for every key that can come from the file, the environment or a flag."""
    keys: dict[str, Any] = {}
    for name, kind in get_type_hints(Settings).items():
        if name == "config_file":
            continue
        if name in _SECTIONS:
            for sub, sub_kind in get_type_hints(_SECTIONS[name]).items():
                if f"{name}.{sub}" not in _LIST_OF_TABLES:
                    keys[f"{name}.{sub}"] = sub_kind
        else:
            keys[name] = kind
    return keys


def env_name(key: str) -> str:
    """The environment variable of a dotted key: auth.required -> LBP_AUTH_REQUIRED."""
    return ENV_PREFIX + key.replace(".", "_").upper()


def _kind_name(kind: Any) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}.get(
        kind, "a list of strings")


def _coerce(key: str, raw: Any, kind: Any) -> Any:
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if kind is int:
            if isinstance(raw, bool) or isinstance(raw, float):
                raise ValueError(raw)
            return int(raw)
        if kind is float:
            if isinstance(raw, bool):
                raise ValueError(raw)
            return float(raw)
        if kind == tuple[str, ...]:
            if isinstance(raw, str):
                return tuple(part.strip() for part in raw.split(",") if part.strip())
            if isinstance(raw, list | tuple) and all(isinstance(p, str) for p in raw):
                return tuple(raw)
            raise ValueError(raw)
        if kind is str:
            if not isinstance(raw, str):
                raise ValueError(raw)
            return raw
    except (TypeError, ValueError):
        shown = "(hidden)" if "token" in key or "key" in key else repr(raw)[:80]
        raise SettingsError(f"setting '{key}': {shown} is not {_kind_name(kind)}") from None
    raise SettingsError(f"setting '{key}': unsupported type")


def _read_file(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"configuration file not found: {path}") from None
    except IsADirectoryError:
        raise SettingsError(f"configuration file {path} is a directory") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"configuration file {path} is not valid TOML: {exc}") from None


def _flatten(data: dict, path: Path, scalar: dict[str, Any]) -> tuple[dict[str, Any], list[dict]]:
    """File contents -> {dotted key: raw value} and the raw [[auth.clients]] tables; unknown keys fail."""
    flat: dict[str, Any] = {}
    clients: list[dict] = []
    unknown: list[str] = []
    for key, value in data.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise SettingsError(f"setting '{key}' in {path}: must be a table ([{key}])")
            for sub, sub_value in value.items():
                dotted = f"{key}.{sub}"
                if dotted in _LIST_OF_TABLES:
                    if not isinstance(sub_value, list) or not all(isinstance(t, dict) for t in sub_value):
                        raise SettingsError(f"setting '{dotted}' in {path}: must be a list of tables "
                                            f"([[{dotted}]])")
                    clients = sub_value
                elif dotted in scalar:
                    flat[dotted] = sub_value
                else:
                    unknown.append(dotted)
        elif key in scalar:
            flat[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise SettingsError(f"unknown setting(s) in {path}: {', '.join(sorted(unknown))}")
    return flat, clients


def _client(index: int, table: dict, base: Path) -> AuthClient:
    name = f"auth.clients[{index}]"
    hints = get_type_hints(AuthClient)
    unknown = sorted(set(table) - set(hints))
    if unknown:
        raise SettingsError(f"unknown setting(s) in {name}: {', '.join(unknown)}")
    values = {key: _coerce(f"{name}.{key}", raw, hints[key]) for key, raw in table.items()}
    if not values.get("issuer"):
        raise SettingsError(f"setting '{name}.issuer' is required")
    if bool(values.get("jwks_file")) == bool(values.get("jwks_url")):
        raise SettingsError(f"{name} ({values['issuer']}): set exactly one of jwks_file and jwks_url")
    if values.get("jwks_file") and not Path(values["jwks_file"]).is_absolute():
        values["jwks_file"] = str(base / values["jwks_file"])  # relative to the configuration file
    return AuthClient(**values)


def load_settings(config_file: str | os.PathLike | None = None, env: dict[str, str] | None = None,
                  **overrides: Any) -> Settings:
    """Defaults, then the TOML file (argument or LBP_CONFIG), then LBP_<KEY>, then overrides (flags).

    An override of None means "not given" (a flag left out), never "reset to the default".
    Override keys are dotted names with '_' for '.' where needed: ``auth_required=True``.
    """
    env = dict(os.environ if env is None else env)
    scalar = _scalar_keys()
    values: dict[str, Any] = {}
    clients: tuple[AuthClient, ...] = ()

    path_text = str(config_file) if config_file else env.get(ENV_PREFIX + "CONFIG", "")
    if path_text:
        path = Path(path_text)
        flat, tables = _flatten(_read_file(path), path, scalar)
        values.update({key: _coerce(key, raw, scalar[key]) for key, raw in flat.items()})
        base = path.resolve().parent
        clients = tuple(_client(i, table, base) for i, table in enumerate(tables))
        for key, default in CONFIGURED_DEFAULTS.items():
            values.setdefault(key, default)

    for key, kind in scalar.items():
        if env_name(key) in env:
            values[key] = _coerce(key, env[env_name(key)], kind)

    by_flag_name = {key.replace(".", "_"): key for key in scalar}
    for name, raw in overrides.items():
        if name not in by_flag_name:
            raise SettingsError(f"unknown setting: {name}")
        if raw is not None:
            key = by_flag_name[name]
            values[key] = _coerce(key, raw, scalar[key])

    top = {k: v for k, v in values.items() if "." not in k}
    sections = {name: kind(**{k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(name + ".")})
                for name, kind in _SECTIONS.items()}
    sections["auth"] = dataclasses.replace(sections["auth"], clients=clients)
    settings = Settings(**top, **sections, config_file=path_text)
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    if not 0 < settings.port < 65536:
        raise SettingsError("setting 'port': must be between 1 and 65535")
    for name in ("fhir_connect_timeout", "fhir_read_timeout", "fhir_total_timeout", "hook_deadline_seconds"):
        if getattr(settings, name) <= 0:
            raise SettingsError(f"setting '{name}': must be positive")
    for name in ("fhir_page_cap", "fhir_page_size", "workers", "threads", "fhir_max_workers", "max_content_length",
                 "max_json_depth", "max_bundle_entries", "max_draft_orders", "max_string_length"):
        if getattr(settings, name) < 1:
            raise SettingsError(f"setting '{name}': must be at least 1")
    for name in ("fhir_max_retries", "rate_limit_per_minute", "snooze_days", "retention_days", "graceful_timeout",
                 "max_notes", "max_reports"):
        if getattr(settings, name) < 0:
            raise SettingsError(f"setting '{name}': must be zero or more")
    if settings.auth.leeway_seconds < 0:
        raise SettingsError("setting 'auth.leeway_seconds': must be zero or more")
    if settings.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise SettingsError("setting 'log_level': must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")


def startup_problems(settings: Settings) -> list[str]:
    """Why the service must not start with these settings (empty when it may).

    Never a service that answers 401 to everyone, and never an unauthenticated one beyond loopback.
    """
    from .network import is_loopback
    from .switches import switch_problems

    problems = switch_problems(settings)
    if not settings.auth.required and not is_loopback(settings.host):
        problems.append(f"refusing to listen on {settings.host}: authentication of CDS clients is off "
                        "(auth.required = false, LBP_AUTH_REQUIRED), so the service serves loopback only "
                        "(127.0.0.1, ::1 or localhost)")
    if settings.auth.required:
        if not settings.auth.clients:
            problems.append("auth.required is true but no client is configured: add [[auth.clients]] "
                            "(issuer and jwks_file or jwks_url) to the configuration file")
        if not settings.public_base_url:
            problems.append("auth.required is true but public_base_url (LBP_PUBLIC_BASE_URL) is not set: "
                            "the JWT audience is derived from it")
    return problems


def replace(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, **changes)
