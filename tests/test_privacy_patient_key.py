"""Patients are stored only as keyed hashes (HMAC-SHA256): under patient_key when set, else a random
key kept in the database."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from cds_service.settings import SettingsError
from cds_service.store import Store

KEY = "k" * 40


def test_configured_patient_key_is_the_hmac_secret(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'a.db'}", KEY)
    assert store.patient_key("p1") == hmac.new(KEY.encode(), b"p1", hashlib.sha256).hexdigest()


def test_configured_patient_key_gives_the_same_hash_in_every_database(tmp_path):
    # Replicas with their own databases recognise the same patient.
    assert Store(f"sqlite:///{tmp_path / 'a.db'}", KEY).patient_key("p1") == \
        Store(f"sqlite:///{tmp_path / 'b.db'}", KEY).patient_key("p1")


def migrated(url: str) -> Store:
    store = Store(url)
    store.migrate()
    return store


def test_without_patient_key_each_database_keeps_its_own_random_key(tmp_path):
    first = migrated(f"sqlite:///{tmp_path / 'a.db'}")
    assert first.patient_key("p1") == migrated(f"sqlite:///{tmp_path / 'a.db'}").patient_key("p1")
    assert first.patient_key("p1") != migrated(f"sqlite:///{tmp_path / 'b.db'}").patient_key("p1")
    assert "p1" not in first.patient_key("p1")


def test_a_short_patient_key_is_refused_naming_the_setting(tmp_path):
    with pytest.raises(SettingsError, match="patient_key"):
        Store(f"sqlite:///{tmp_path / 'a.db'}", "short")
