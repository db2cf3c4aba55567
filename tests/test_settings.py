"""Settings: embedded defaults < TOML file < LBP_* environment < command-line flags."""

from dataclasses import fields

import pytest
from conftest import ROOT

from cds_service.settings import (
    CONFIGURED_DEFAULTS,
    Settings,
    SettingsError,
    _scalar_keys,
    env_name,
    load_settings,
    startup_problems,
)

CLIENT = """
[[auth.clients]]
issuer = "https://ehr.example.org"
jwks_file = "keys/ehr.json"
fhir_servers = ["https://ehr.example.org/fhir"]
"""


def write(tmp_path, text: str):
    path = tmp_path / "lbp.toml"
    path.write_text(text)
    return path


def test_embedded_defaults_are_loopback_and_sqlite():
    settings = load_settings(env={})
    assert settings.host == "127.0.0.1" and settings.port == 8080
    assert settings.database_url.startswith("sqlite:///")
    assert settings.fhir_allowed_servers == ("loopback",)


def test_without_a_file_the_local_profile_applies():
    settings = load_settings(env={})
    assert settings.local_profile
    assert not settings.auth.required and settings.fhir.allow_http and settings.fhir.allow_private_networks
    assert settings.rate_limit_per_minute == 0


def test_a_file_switches_to_the_secure_defaults(tmp_path):
    settings = load_settings(write(tmp_path, "port = 9001\n"), env={})
    assert not settings.local_profile
    assert settings.auth.required and not settings.fhir.allow_http and not settings.fhir.allow_private_networks
    assert settings.rate_limit_per_minute == CONFIGURED_DEFAULTS["rate_limit_per_minute"]


# ---------------------------------------------------------------- host and port, from each source

def test_port_from_the_file(tmp_path):
    assert load_settings(write(tmp_path, "port = 9002\n"), env={}).port == 9002


def test_port_from_the_environment():
    assert load_settings(env={"LBP_PORT": "9003"}).port == 9003


def test_port_from_the_flag_wins_over_environment_and_file(tmp_path):
    settings = load_settings(write(tmp_path, "port = 9002\n"), env={"LBP_PORT": "9003"}, port=9004)
    assert settings.port == 9004


def test_environment_wins_over_the_file(tmp_path):
    assert load_settings(write(tmp_path, "port = 9002\n"), env={"LBP_PORT": "9003"}).port == 9003


def test_a_flag_left_out_keeps_the_file_and_environment_values(tmp_path):
    settings = load_settings(write(tmp_path, 'port = 9002\nhost = "::1"\n'), env={}, port=None, host=None)
    assert settings.port == 9002 and settings.host == "::1"


def test_host_from_the_file(tmp_path):
    assert load_settings(write(tmp_path, 'host = "::1"\n'), env={}).host == "::1"


def test_host_from_the_environment():
    assert load_settings(env={"LBP_HOST": "0.0.0.0"}).host == "0.0.0.0"


def test_host_from_the_flag_wins(tmp_path):
    assert load_settings(write(tmp_path, 'host = "::1"\n'), env={"LBP_HOST": "0.0.0.0"},
                         host="localhost").host == "localhost"


# ---------------------------------------------------------------- every key, from file and environment

SAMPLES = {bool: (True, "true"), int: (7, "7"), float: (2.5, "2.5"), str: ("x-value", "x-value"),
           tuple[str, ...]: (["a", "b"], "a,b")}


def _toml(key: str, value) -> str:
    import json

    literal = json.dumps(value) if not isinstance(value, bool) else str(value).lower()
    if "." in key:
        section, name = key.split(".", 1)
        return f"[{section}]\n{name} = {literal}\n"
    return f"{key} = {literal}\n"


def _effective(settings: Settings, key: str):
    if "." in key:
        section, name = key.split(".", 1)
        return getattr(getattr(settings, section), name)
    return getattr(settings, key)


SCALAR_KEYS = sorted(_scalar_keys().items())


@pytest.mark.parametrize("key,kind", SCALAR_KEYS, ids=[k for k, _ in SCALAR_KEYS])
def test_every_key_is_read_from_the_file(tmp_path, key, kind):
    value, _ = SAMPLES[kind]
    if key == "log_level":
        value = "DEBUG"
    settings = load_settings(write(tmp_path, _toml(key, value)), env={})
    expected = tuple(value) if isinstance(value, list) else value
    assert _effective(settings, key) == expected


@pytest.mark.parametrize("key,kind", SCALAR_KEYS, ids=[k for k, _ in SCALAR_KEYS])
def test_every_key_is_read_from_the_environment_over_the_file(tmp_path, key, kind):
    file_value, _ = SAMPLES[kind]
    env_value = {bool: "false", int: "9", float: "3.5", str: "y-value", tuple[str, ...]: "c, d"}[kind]
    if key == "log_level":
        file_value, env_value = "DEBUG", "ERROR"
    settings = load_settings(write(tmp_path, _toml(key, file_value)), env={env_name(key): env_value})
    expected = {bool: False, int: 9, float: 3.5, str: env_value, tuple[str, ...]: ("c", "d")}[kind]
    assert _effective(settings, key) == expected


@pytest.mark.parametrize("key,kind", [(k, t) for k, t in SCALAR_KEYS if t in (bool, int, float)],
                         ids=[k for k, t in SCALAR_KEYS if t in (bool, int, float)])
def test_a_wrong_type_names_the_key(key, kind):
    with pytest.raises(SettingsError, match=key.replace(".", r"\.")):
        load_settings(env={env_name(key): "not-a-value"})


def test_nested_keys_have_environment_variables():
    assert env_name("auth.required") == "LBP_AUTH_REQUIRED"
    assert env_name("fhir.allow_private_networks") == "LBP_FHIR_ALLOW_PRIVATE_NETWORKS"


def test_config_file_can_come_from_lbp_config(tmp_path):
    path = write(tmp_path, 'database_url = "sqlite:///x.db"\n')
    assert load_settings(env={"LBP_CONFIG": str(path)}).database_url == "sqlite:///x.db"


def test_unknown_key_in_the_file_is_an_error(tmp_path):
    with pytest.raises(SettingsError, match="prot"):
        load_settings(write(tmp_path, "prot = 1\n"), env={})


def test_unknown_nested_key_is_an_error(tmp_path):
    with pytest.raises(SettingsError, match=r"auth\.requird"):
        load_settings(write(tmp_path, "[auth]\nrequird = true\n"), env={})


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "absent.toml", env={})


def test_invalid_toml_is_a_clear_error(tmp_path):
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(write(tmp_path, "port = = 1\n"), env={})


def test_notes_and_reports_read_default_to_20_and_10():
    settings = load_settings(env={})
    assert (settings.max_notes, settings.max_reports) == (20, 10)


@pytest.mark.parametrize("key", ["max_notes", "max_reports"])
def test_a_negative_notes_cap_is_refused(key):
    with pytest.raises(SettingsError, match=f"'{key}': must be zero or more"):
        load_settings(env={env_name(key): "-1"})


# ---------------------------------------------------------------- clients

def test_clients_come_from_the_file_with_paths_relative_to_it(tmp_path):
    settings = load_settings(write(tmp_path, CLIENT), env={})
    client = settings.auth.client("https://ehr.example.org")
    assert client.jwks_file == str(tmp_path.resolve() / "keys" / "ehr.json")
    assert client.fhir_servers == ("https://ehr.example.org/fhir",) and client.tenants == ()


def test_a_client_needs_exactly_one_key_source(tmp_path):
    with pytest.raises(SettingsError, match="exactly one of jwks_file and jwks_url"):
        load_settings(write(tmp_path, '[[auth.clients]]\nissuer = "https://a.org"\n'), env={})


def test_an_unknown_client_key_names_the_client(tmp_path):
    with pytest.raises(SettingsError, match=r"auth\.clients\[0\]: jwks"):
        load_settings(write(tmp_path, CLIENT.replace("jwks_file", "jwks")), env={})


# ---------------------------------------------------------------- what serve refuses

def test_local_profile_on_loopback_may_start():
    assert startup_problems(load_settings(env={})) == []


def test_authentication_off_refuses_a_public_address():
    problems = startup_problems(load_settings(env={"LBP_HOST": "0.0.0.0"}))
    assert problems and "loopback" in problems[0] and "auth.required" in problems[0]


def test_required_authentication_without_clients_or_base_url_names_both(tmp_path):
    problems = " ".join(startup_problems(load_settings(write(tmp_path, "port = 9001\n"), env={})))
    assert "[[auth.clients]]" in problems and "public_base_url" in problems


def test_required_authentication_with_a_client_and_base_url_may_bind_anywhere(tmp_path):
    path = write(tmp_path, 'public_base_url = "https://cds.example.org"\nhost = "0.0.0.0"\n' + CLIENT)
    assert startup_problems(load_settings(path, env={})) == []


def test_every_setting_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    documented = [f.name for f in fields(Settings) if f.name not in ("auth", "fhir", "config_file")]
    documented += list(_scalar_keys()) + ["auth.clients"]
    for key in documented:
        assert f"`{key}`" in readme, key
