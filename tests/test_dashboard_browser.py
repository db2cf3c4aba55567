"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright (never a
downloaded browser). It signs in with the admin token, checks that the figures shown are the data's,
and saves a screenshot under tests/artifacts/ (ignored by git)."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from audit_requests import SEEDED, rows, seed

TOKEN = "browser-test-admin-token"
ARTIFACTS = Path(__file__).parent / "artifacts"


def chromium() -> str:
    path = os.environ.get("LBP_TEST_CHROMIUM") or shutil.which("chromium")
    if not path:
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium is not installed: ./scripts/test installs it")
        pytest.skip("Debian's chromium is not installed: run ./scripts/test once to install it")
    return path


@pytest.fixture(scope="module")
def seeded_service(start_service, tmp_path_factory):
    """Three rounds of the seeded history: 6 days ago, 3 days ago and today."""
    database = f"sqlite:///{tmp_path_factory.mktemp('browser') / 'audit.db'}"
    service = start_service(admin_token=TOKEN, database_url=database)

    def post(path, body):
        response = requests.post(service.base_url + path, json=body, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    for days_ago in (6, 3, 0):
        seed(post, suffix=f"-{days_ago}")
        if days_ago:
            now = datetime.now(UTC).replace(tzinfo=None)  # SQLite keeps UTC without an offset
            shift = {"when": now - timedelta(days=days_ago), "recent": now - timedelta(hours=1)}
            rows(database, "UPDATE hook_calls SET called_at = :when WHERE called_at > :recent", **shift)
            rows(database, "UPDATE issued_cards SET issued_at = :when WHERE issued_at > :recent", **shift)
    return service


def test_the_dashboard_shows_the_figures_of_the_data_in_a_browser(seeded_service):
    from playwright.sync_api import sync_playwright

    figures = requests.get(seeded_service.base_url + "/dashboard/data.json", timeout=30,
                           headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert figures["totals"]["cards_issued"] == 3 * SEEDED["totals"]["cards_issued"]
    assert figures["totals"]["feedback"]["overridden"] == 3 * SEEDED["totals"]["feedback"]["overridden"]
    assert [d["tier"]["imaging"] for d in figures["cards_over_time"] if d["tier"]["imaging"]] == [5, 5, 5]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(seeded_service.base_url + "/dashboard")
            page.fill("input[name=token]", TOKEN)
            page.click("button[type=submit]")
            page.wait_for_selector("#total-cards-issued")
            cookie = next(c for c in page.context.cookies() if c["name"] == "lbp_dashboard")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

            def text(selector: str) -> str:
                return page.inner_text(selector).strip()

            totals = figures["totals"]
            assert text("#total-calls") == str(totals["calls"])
            assert text("#total-patients") == str(totals["patients"])
            assert text("#total-cards-issued") == str(totals["cards_issued"])
            assert text("#total-accepted") == str(totals["feedback"]["accepted"])
            assert text("#total-overridden") == str(totals["feedback"]["overridden"])
            imaging = next(t for t in figures["by_card_type"] if t["tier"] == "imaging")
            cells = page.locator('#by-card-type tr[data-tier="imaging"] td').all_inner_texts()
            assert cells[1:5] == [str(imaging[k]) for k in ("shown", "accepted", "overridden", "no_feedback")]
            assert cells[5].strip() == f"{imaging['acceptance_rate'] * 100:.1f} %"
            reasons = page.locator("#override-reasons tbody tr td.num").all_inner_texts()
            assert reasons == [str(r["count"]) for r in figures["override_reasons"]]
            burden = next(b for b in figures["alert_burden"] if b["tier"] == "imaging")
            row = page.locator('#alert-burden tr[data-tier="imaging"] td').all_inner_texts()
            assert row[2].strip() == f"{burden['call_share'] * 100:.1f} %"
            assert page.locator("svg.chart").count() == 5
            assert "<script>alert(1)</script>" in page.inner_text("#comments")  # shown as text, not run
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    print(f"\ndashboard screenshot: {shot}")
    assert shot.stat().st_size > 10_000
