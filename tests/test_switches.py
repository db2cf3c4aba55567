"""The CDS committee's switches, through the running service: silent mode, disabled tiers and flags,
snooze after a work-up-done override. Emergencies pass every switch; held-back cards are still recorded."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests
from audit_requests import (
    CONSIDER,
    EMERGENCY_MSCC,
    IMAGING,
    ORDER_IMAGING,
    example_body,
    feedback,
    with_esr,
)

from cds_service.app import create_app
from cds_service.settings import SettingsError, load_settings, startup_problems
from cds_service.switches import apply_switches

TOKEN = "switches-test-admin-token"


@pytest.fixture(scope="module")
def tuned(start_service):
    """A service with consider cards off, two weak flags off and the default 30-day snooze."""
    return start_service(disabled_tiers="consider", disabled_flags="age-50-plus,elevated-psa", admin_token=TOKEN)


@pytest.fixture(scope="module")
def silent(start_service):
    return start_service(silent_mode="true", admin_token=TOKEN)


def call(service, prefix, patient, body=None):
    service_id, request = example_body(prefix, patient_id=patient)
    response = service.post(service_id, body or request)
    assert response.status_code == 200, response.text
    return response.json(), request


def override(service, card, code, service_id="lbp-patient-view"):
    response = requests.post(f"{service.base_url}/cds-services/{service_id}/feedback", timeout=30,
                             json=feedback(card["uuid"], "overridden", code=code))
    assert response.status_code == 200, response.text


def totals(service, **params):
    return requests.get(service.base_url + "/dashboard/data.json", params=params, timeout=30,
                        headers={"Authorization": f"Bearer {TOKEN}"}).json()


# ---------------------------------------------------------------- silent mode

def test_silent_mode_answers_no_card_and_no_system_action(silent):
    assert call(silent, IMAGING, "silent-1")[0] == {"cards": []}
    assert call(silent, ORDER_IMAGING, "silent-2")[0] == {"cards": []}


def test_silent_mode_never_silences_an_emergency(silent):
    answer, _ = call(silent, EMERGENCY_MSCC, "silent-3")
    assert [c["indicator"] for c in answer["cards"]] == ["critical"]


def test_silent_calls_are_recorded_with_what_would_have_fired(silent):
    before = totals(silent)
    call(silent, IMAGING, "silent-4")
    after = totals(silent)
    assert after["totals"]["calls_silent"] == before["totals"]["calls_silent"] + 1, silent.log()[-4000:]
    assert after["totals"]["cards_held_back"]["silent"] == before["totals"]["cards_held_back"].get("silent", 0) + 1
    imaging = next(b for b in after["alert_burden"] if b["tier"] == "imaging")
    assert imaging["calls_had_it_fired"] >= 1 and imaging["calls"] == 0


# ---------------------------------------------------------------- disabled tiers and flags

def test_a_disabled_tier_is_held_back_and_recorded(tuned):
    assert call(tuned, CONSIDER, "tier-1")[0]["cards"] == []
    assert totals(tuned)["totals"]["cards_held_back"]["disabled-tier"] >= 1


def test_a_card_resting_only_on_disabled_flags_is_held_back_but_the_order_is_still_rated(tuned):
    answer, _ = call(tuned, ORDER_IMAGING, "flag-1")  # age-50-plus and elevated-psa, both disabled
    assert answer["cards"] == [] and answer["systemActions"]


def test_a_card_with_another_flag_is_still_shown(tuned):
    answer, _ = call(tuned, IMAGING, "flag-2")  # cancer-history and age-50-plus
    assert answer["cards"][0]["extension"]["lbp-redflags"]["redFlags"] == ["cancer-history", "age-50-plus"]


def test_serve_refuses_a_switch_that_could_hide_an_emergency_and_says_why(tmp_path):
    full = {k: v for k, v in os.environ.items() if not k.startswith("LBP_")}
    full["LBP_DISABLED_FLAGS"] = "smoking,neuro-deficit"
    result = subprocess.run([sys.executable, "-m", "cds_service.cli", "serve", "--port", "1"], env=full,
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "neuro-deficit cannot be disabled" in result.stderr


@pytest.mark.parametrize("changes,named", [
    ({"disabled_flags": "myeloma"}, "myeloma cannot be disabled"),
    ({"disabled_flags": "cancer-history,smoking"}, "cancer-history cannot be disabled"),
    ({"disabled_tiers": "imaging"}, "imaging cannot be disabled"),
    ({"disabled_tiers": "emergency"}, "emergency cannot be disabled"),
    ({"disabled_flags": "no-such-flag"}, "unknown red flag"),
])
def test_every_forbidden_switch_is_named_at_start_up(changes, named):
    assert any(named in problem for problem in startup_problems(load_settings(env={}, **changes)))


def test_weak_flags_and_the_consider_tier_may_be_switched_off():
    settings = load_settings(env={}, disabled_flags="smoking,age-50-plus,night-pain", disabled_tiers="consider")
    assert startup_problems(settings) == []


def test_the_app_itself_refuses_a_forbidden_switch(tmp_path):
    with pytest.raises(SettingsError, match="saddle-anesthesia"):
        create_app(load_settings(env={}, database_url=f"sqlite:///{tmp_path / 'x.db'}",
                                 disabled_flags="saddle-anesthesia"))


# ---------------------------------------------------------------- snooze

def test_work_up_done_snoozes_the_same_advice_for_the_same_patient(tuned):
    answer, request = call(tuned, IMAGING, "snooze-1")
    override(tuned, answer["cards"][0], "already-imaged")
    before = totals(tuned)["totals"]["calls_snoozed"]
    again, _ = call(tuned, IMAGING, "snooze-1")
    assert again["cards"] == []
    assert totals(tuned)["totals"]["calls_snoozed"] == before + 1
    assert call(tuned, IMAGING, "snooze-other-patient")[0]["cards"]


def test_a_new_red_flag_ends_the_snooze(tuned):
    answer, request = call(tuned, IMAGING, "snooze-2")
    override(tuned, answer["cards"][0], "already-imaged")
    response = tuned.post("lbp-patient-view", with_esr(request, 62)).json()
    assert "elevated-esr" in response["cards"][0]["extension"]["lbp-redflags"]["redFlags"]


def test_an_override_for_another_reason_does_not_snooze(tuned):
    answer, _ = call(tuned, IMAGING, "snooze-3")
    override(tuned, answer["cards"][0], "patient-declined")
    assert call(tuned, IMAGING, "snooze-3")[0]["cards"]


def test_an_emergency_is_never_snoozed(tuned):
    answer, _ = call(tuned, EMERGENCY_MSCC, "snooze-4")
    override(tuned, answer["cards"][0], "already-imaged")
    assert [c["indicator"] for c in call(tuned, EMERGENCY_MSCC, "snooze-4")[0]["cards"]] == ["critical"]


# ---------------------------------------------------------------- the rule itself (pure function)

class Switches:
    silent_mode = False
    disabled_tiers: tuple = ()
    disabled_flags: tuple = ()
    snooze_days = 30


def card(uuid, tier, flags):
    return {"uuid": uuid, "extension": {"lbp-redflags": {"tier": tier, "redFlags": flags}}}


@pytest.mark.parametrize("prior,now,held", [
    (("imaging", {"cancer-history", "age-50-plus"}), ("imaging", ["cancer-history"]), True),
    (("imaging", {"cancer-history"}), ("consider", ["cancer-history"]), True),
    (("consider", {"age-50-plus"}), ("imaging", ["age-50-plus"]), False),  # the tier rose
    (("imaging", {"cancer-history"}), ("imaging", ["cancer-history", "fever"]), False),  # a new flag
])
def test_snooze_holds_the_same_or_lesser_advice_only(prior, now, held):
    result = apply_switches({"cards": [card("c", now[0], now[1])]}, Switches(), lambda: [prior])
    assert (result.held_back == {"c": "snoozed"}) is held


def test_snooze_days_zero_turns_the_snooze_off():
    off = type("Off", (Switches,), {"snooze_days": 0})()
    result = apply_switches({"cards": [card("c", "imaging", ["cancer-history"])]}, off,
                            lambda: [("imaging", {"cancer-history"})])
    assert result.held_back == {}
