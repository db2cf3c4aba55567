"""Settings: embedded defaults < TOML file < LBP_* environment."""

import pytest

from cds_service.settings import SettingsError, load_settings


def test_embedded_defaults_are_loopback_and_sqlite():
    settings = load_settings(env={})
    assert settings.host == "127.0.0.1" and settings.port == 8080
    assert settings.database_url.startswith("sqlite:///")
    assert settings.fhir_allowed_servers == ("loopback",)


def test_toml_file_sets_keys(tmp_path):
    path = tmp_path / "lbp.toml"
    path.write_text('port = 9001\nfhir_allowed_servers = ["https://ehr.example.org/fhir"]\n')
    settings = load_settings(path, env={})
    assert settings.port == 9001 and settings.fhir_allowed_servers == ("https://ehr.example.org/fhir",)


def test_environment_overrides_the_file(tmp_path):
    path = tmp_path / "lbp.toml"
    path.write_text("port = 9001\n")
    settings = load_settings(path, env={"LBP_PORT": "9002", "LBP_CORS_ORIGINS": "https://a.org, https://b.org"})
    assert settings.port == 9002 and settings.cors_origins == ("https://a.org", "https://b.org")


def test_config_file_can_come_from_lbp_config(tmp_path):
    path = tmp_path / "lbp.toml"
    path.write_text('database_url = "sqlite:///x.db"\n')
    assert load_settings(env={"LBP_CONFIG": str(path)}).database_url == "sqlite:///x.db"


def test_unknown_key_in_the_file_is_an_error(tmp_path):
    path = tmp_path / "lbp.toml"
    path.write_text("prot = 1\n")
    with pytest.raises(SettingsError, match="prot"):
        load_settings(path, env={})


def test_bad_value_names_the_key():
    with pytest.raises(SettingsError, match="fhir_read_timeout"):
        load_settings(env={"LBP_FHIR_READ_TIMEOUT": "soon"})


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "absent.toml", env={})


def test_every_setting_is_documented_in_the_readme():
    from dataclasses import fields
    from pathlib import Path

    from cds_service.settings import Settings

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for field in fields(Settings):
        if field.name != "extra":
            assert f"`{field.name}`" in readme, field.name
