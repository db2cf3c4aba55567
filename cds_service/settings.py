"""One frozen settings object: embedded defaults < TOML file < LBP_* environment variables.

Every key is documented in the README's configuration table; adding a field here and a row there
is all a new key needs.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

ENV_PREFIX = "LBP_"


class SettingsError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 2
    public_base_url: str = ""
    database_url: str = "sqlite:///lbp-redflags.db"
    cors_origins: tuple[str, ...] = ("*",)
    max_content_length: int = 32 * 1024 * 1024
    fhir_allowed_servers: tuple[str, ...] = ("loopback",)
    fhir_connect_timeout: float = 3.05
    fhir_read_timeout: float = 10.0
    fhir_total_timeout: float = 20.0
    fhir_page_cap: int = 10
    fhir_page_size: int = 200
    fhir_max_retries: int = 2
    fhir_max_workers: int = 8
    terminology_server: str = ""
    terminology_timeout: float = 2.0
    terminology_cache_size: int = 20000
    log_level: str = "INFO"
    source_url: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def auth_configured(self) -> bool:
        """Authentication of CDS clients is not implemented yet: the service serves loopback only."""
        return False


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
            if isinstance(raw, bool):
                raise ValueError(raw)
            return int(raw)
        if kind is float:
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
        raise SettingsError(f"setting '{key}': cannot use {raw!r} as {getattr(kind, '__name__', kind)}") from None
    raise SettingsError(f"setting '{key}': unsupported type")


def load_settings(config_file: str | os.PathLike | None = None, env: dict[str, str] | None = None,
                  **overrides: Any) -> Settings:
    """Build Settings from defaults, then the TOML file (argument or LBP_CONFIG), then LBP_<KEY>."""
    env = dict(os.environ if env is None else env)
    hints = get_type_hints(Settings)
    known = {f.name for f in fields(Settings) if f.name != "extra"}
    values: dict[str, Any] = {}

    path = config_file or env.get(ENV_PREFIX + "CONFIG")
    if path:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SettingsError(f"configuration file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"configuration file {path} is not valid TOML: {exc}") from None
        unknown = sorted(set(data) - known)
        if unknown:
            raise SettingsError(f"unknown setting(s) in {path}: {', '.join(unknown)}")
        for key, raw in data.items():
            values[key] = _coerce(key, raw, hints[key])

    for key in known:
        env_key = ENV_PREFIX + key.upper()
        if env_key in env:
            values[key] = _coerce(key, env[env_key], hints[key])

    for key, raw in overrides.items():
        if key not in known:
            raise SettingsError(f"unknown setting: {key}")
        values[key] = _coerce(key, raw, hints[key]) if raw is not None else getattr(Settings, key)

    settings = Settings(**values)
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    if not 0 < settings.port < 65536:
        raise SettingsError("setting 'port': must be between 1 and 65535")
    for name in ("fhir_connect_timeout", "fhir_read_timeout", "fhir_total_timeout"):
        if getattr(settings, name) <= 0:
            raise SettingsError(f"setting '{name}': must be positive")
    for name in ("fhir_page_cap", "fhir_page_size", "workers", "fhir_max_workers", "max_content_length"):
        if getattr(settings, name) < 1:
            raise SettingsError(f"setting '{name}': must be at least 1")
    if settings.fhir_max_retries < 0:
        raise SettingsError("setting 'fhir_max_retries': must be zero or more")


def replace(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, **changes)
