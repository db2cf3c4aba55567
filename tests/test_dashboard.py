"""The override dashboard: the right figures, filters, the admin token, escaping and CSV neutralisation."""

from __future__ import annotations

import csv
import io
import logging
from datetime import timedelta

import pytest
from audit_requests import HOSTILE_COMMENT, SEEDED, seed
from conftest import today

from cds_service.app import create_app
from cds_service.settings import load_settings

TOKEN = "dashboard-test-admin-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def dashboard(tmp_path):
    app = create_app(load_settings(env={}, database_url=f"sqlite:///{tmp_path / 'd.db'}", admin_token=TOKEN))
    client = app.test_client()

    def post(path, body):
        response = client.post(path, json=body)
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    seed(post)
    return client


def data(client, **params):
    response = client.get("/dashboard/data.json", query_string=params, headers=BEARER)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


# ---------------------------------------------------------------- figures

def test_totals_count_calls_patients_cards_and_feedback(dashboard):
    totals = data(dashboard)["totals"]
    assert {k: totals[k] for k in SEEDED["totals"]} == SEEDED["totals"]


def test_acceptance_and_override_rates_per_card_type(dashboard):
    by_type = {row["tier"]: row for row in data(dashboard)["by_card_type"]}
    for tier in ("imaging", "consider"):
        assert {k: by_type[tier][k] for k in SEEDED[tier]} == SEEDED[tier]
    assert by_type["emergency"]["shown"] == 0 and by_type["emergency"]["acceptance_rate"] is None


def test_acceptance_and_override_rates_per_red_flag(dashboard):
    by_flag = {row["flag"]: row for row in data(dashboard)["by_red_flag"]}
    assert (by_flag["cancer-history"]["shown"], by_flag["cancer-history"]["accepted"],
            by_flag["cancer-history"]["overridden"]) == (4, 1, 2)
    assert by_flag["age-50-plus"]["shown"] == 6
    assert by_flag["elevated-esr"]["override_rate"] == 1.0
    assert by_flag["elevated-psa"]["no_feedback"] == 1


def test_override_reasons_are_ranked_with_their_display(dashboard):
    reasons = data(dashboard)["override_reasons"]
    assert [(r["code"], r["count"]) for r in reasons] == SEEDED["reasons"]
    assert reasons[0]["display"] == "Already imaged for this episode"


def test_alert_burden_is_the_share_of_calls_and_of_patients_per_tier(dashboard):
    burden = {row["tier"]: row for row in data(dashboard)["alert_burden"]}
    assert (burden["imaging"]["calls"], burden["imaging"]["call_share"]) == (5, round(5 / 7, 4))
    assert (burden["consider"]["patients"], burden["consider"]["patient_share"]) == (1, round(1 / 7, 4))
    assert burden["emergency"]["call_share"] == 0.0


def test_latency_and_fhir_fetch_share_are_reported(dashboard):
    figures = data(dashboard)
    assert 0 < figures["latency_ms"]["median"] <= figures["latency_ms"]["p95"]
    assert figures["fhir_fetch"] == {"calls": 0, "share": 0.0}  # every call came with its prefetch


def test_cards_over_time_are_per_day_tier_and_hook(dashboard):
    days = data(dashboard)["cards_over_time"]
    assert len(days) == 30 and days[-1]["date"] == today().isoformat()
    assert days[-1]["tier"] == {"emergency": 0, "imaging": 5, "consider": 1, "none": 0}
    assert days[-1]["hook"] == {"order-select": 1, "patient-view": 5}


# ---------------------------------------------------------------- filters

def test_filters_by_service(dashboard):
    totals = data(dashboard, service="lbp-imaging-order-select")["totals"]
    assert (totals["calls"], totals["cards_issued"], totals["feedback"]["overridden"]) == (1, 1, 0)


def test_filters_by_date_range(dashboard):
    tomorrow = (today() + timedelta(days=1)).isoformat()
    assert data(dashboard, **{"from": tomorrow, "to": tomorrow})["totals"]["cards_issued"] == 0
    assert data(dashboard, **{"from": today().isoformat(), "to": today().isoformat()})["totals"]["cards_issued"] == 6


@pytest.mark.parametrize("params,field", [({"from": "30/11/2026"}, "from"), ({"to": "2026-13-01"}, "to"),
                                          ({"from": "2026-11-30", "to": "2026-11-01"}, "from"),
                                          ({"service": "nope"}, "service")])
def test_bad_filters_are_400_naming_the_parameter(dashboard, params, field):
    response = dashboard.get("/dashboard/data.json", query_string=params, headers=BEARER)
    assert response.status_code == 400 and response.get_json()["error"]["details"][0]["field"] == field


# ---------------------------------------------------------------- the admin token

def test_without_an_admin_token_the_dashboard_is_off_and_the_log_says_why(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="lbp_redflags"):
        client = create_app(load_settings(env={}, database_url=f"sqlite:///{tmp_path / 'x.db'}")).test_client()
        for path in ("/dashboard", "/dashboard/data.json", "/dashboard/export.csv"):
            assert client.get(path, headers={"Authorization": "Bearer "}).status_code == 404
    assert "dashboard is off: no admin_token is configured" in caplog.text


@pytest.mark.parametrize("path", ["/dashboard/data.json", "/dashboard/export.csv"])
def test_data_and_export_need_the_bearer_token(dashboard, path):
    assert dashboard.get(path).status_code == 401
    assert dashboard.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert dashboard.get(path, headers=BEARER).status_code == 200


def test_the_page_asks_for_the_token_and_exchanges_it_for_a_strict_httponly_cookie(dashboard):
    first = dashboard.get("/dashboard")
    assert first.status_code == 401 and b'action="/dashboard/login"' in first.data
    assert dashboard.post("/dashboard/login", data={"token": "wrong"}).status_code == 401
    login = dashboard.post("/dashboard/login", data={"token": TOKEN})
    assert login.status_code == 303
    cookie = login.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/dashboard" in cookie
    assert TOKEN not in cookie
    page = dashboard.get("/dashboard")
    assert page.status_code == 200 and b'id="total-cards-issued">6<' in page.data
    dashboard.post("/dashboard/logout")
    assert dashboard.get("/dashboard").status_code == 401


def test_a_forged_session_cookie_is_refused(dashboard):
    dashboard.set_cookie("lbp_dashboard", "eyJ2IjoxfQ.forged.signature", path="/dashboard")
    assert dashboard.get("/dashboard").status_code == 401


def test_the_page_runs_no_script_and_may_not_be_framed(dashboard):
    page = dashboard.get("/dashboard", headers=BEARER)
    assert b"<script" not in page.data
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy


# ---------------------------------------------------------------- hostile comments

def test_comments_are_escaped_in_the_page(dashboard):
    page = dashboard.get("/dashboard", headers=BEARER).get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page


def test_comments_cannot_become_spreadsheet_formulas(dashboard):
    response = dashboard.get("/dashboard/export.csv", headers=BEARER)
    assert response.mimetype == "text/csv" and "attachment" in response.headers["Content-Disposition"]
    table = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    comments = [row["user_comment"] for row in table if row["user_comment"]]
    assert comments == ["'" + HOSTILE_COMMENT]
    assert all(not value.startswith(("=", "+", "-", "@")) for row in table for value in row.values())


def test_the_export_has_a_row_per_card_and_feedback_item(dashboard):
    table = list(csv.DictReader(io.StringIO(dashboard.get("/dashboard/export.csv", headers=BEARER)
                                            .get_data(as_text=True))))
    assert len(table) == 6
    assert sorted(row["outcome"] for row in table) == ["", "", "accepted", "overridden", "overridden", "overridden"]
    assert {row["override_display"] for row in table if row["override_code"] == "already-imaged"} == \
        {"Already imaged for this episode"}
