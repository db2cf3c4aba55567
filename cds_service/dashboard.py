"""Blueprint: the override dashboard for the CDS committee (/dashboard, data.json, export.csv).

Server-rendered HTML with inline SVG charts and no script at all. Protected by ``admin_token``:
data.json and export.csv take it as a bearer token; the page has a login form that exchanges it for
an HttpOnly, SameSite=Strict session cookie (accepted by all three). No token configured: every
/dashboard path is 404 and the log says why.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import logging
import math
from datetime import UTC, date, datetime

from flask import Blueprint, Flask, Response, current_app, jsonify, redirect, render_template, request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from markupsafe import Markup, escape

from .errors import ServiceError
from .report import CSV_COLUMNS, TIERS, Filters, csv_rows, default_filters, figures
from .services import SERVICES

bp = Blueprint("dashboard", __name__)
log = logging.getLogger("lbp_redflags.dashboard")
COOKIE = "lbp_dashboard"
SESSION_SECONDS = 8 * 3600
TIER_COLOURS = {"emergency": "#b3261e", "imaging": "#c25e00", "consider": "#1f6fb2", "none": "#7a7a7a"}
HOOK_COLOURS = ("#1f6fb2", "#2e7d32", "#8e24aa", "#c25e00", "#7a7a7a")
OFF_MESSAGE = "dashboard is off: no admin_token is configured (admin_token / LBP_ADMIN_TOKEN)"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def register(app: Flask, settings) -> None:
    if not settings.admin_token:
        log.warning(OFF_MESSAGE)
    app.register_blueprint(bp)


def _token() -> str:
    return current_app.config["LBP_SETTINGS"].admin_token


def _serializer() -> URLSafeTimedSerializer:
    # Keyed on the token: changing admin_token ends every session.
    secret = hmac.new(_token().encode(), b"lbp-redflags dashboard session", hashlib.sha256).hexdigest()
    return URLSafeTimedSerializer(secret, salt="dashboard")


def _bearer_ok() -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), _token().encode())


def _cookie_ok() -> bool:
    value = request.cookies.get(COOKIE)
    if not value:
        return False
    try:
        _serializer().loads(value, max_age=SESSION_SECONDS)
        return True
    except BadSignature:
        return False


@bp.before_request
def _dashboard_on():
    if not _token():
        log.info("%s %s: %s", request.method, request.path, OFF_MESSAGE)
        raise ServiceError(404, "not found")
    return None


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _filters() -> Filters:
    """from, to (YYYY-MM-DD, inclusive) and service from the query string; bad values are a 400."""
    default = default_filters()
    found, values = [], {}
    for name, fallback in (("from", default.start), ("to", default.end)):
        raw = request.args.get(name, "").strip()
        try:
            values[name] = date.fromisoformat(raw) if raw else fallback
        except ValueError:
            found.append({"field": name, "reason": "not a date (YYYY-MM-DD)"})
    service = request.args.get("service", "").strip() or None
    if service and service not in SERVICES:
        found.append({"field": "service", "reason": f"known services: {', '.join(SERVICES)}"})
    if not found and values["from"] > values["to"]:
        found.append({"field": "from", "reason": "is after 'to'"})
    if found:
        raise ServiceError(400, "invalid dashboard filters", found)
    return Filters(values["from"], values["to"], service)


def _unauthorised() -> ServiceError:
    return ServiceError(401, "the admin token is required (Authorization: Bearer <admin_token>)")


@bp.get("/dashboard/data.json")
def data_json():
    if not (_bearer_ok() or _cookie_ok()):
        raise _unauthorised()
    return jsonify(figures(current_app.extensions["lbp_store"], _filters()))


@bp.get("/dashboard/export.csv")
def export_csv():
    if not (_bearer_ok() or _cookie_ok()):
        raise _unauthorised()
    filters = _filters()
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in csv_rows(current_app.extensions["lbp_store"], filters):
        writer.writerow([neutralise(value) for value in row])
    name = f"lbp-redflags-{filters.start.isoformat()}-{filters.end.isoformat()}.csv"
    return Response(out.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


def neutralise(value) -> str:
    """A spreadsheet never runs a cell as a formula: text starting with = + - @ or a control character
    gets a leading apostrophe (OWASP CSV injection)."""
    text = "" if value is None else str(value)
    return "'" + text if text and text[0] in "=+-@\t\r\n|" else text


@bp.get("/dashboard")
def page():
    if not (_cookie_ok() or _bearer_ok()):
        return _login(401)
    filters = _filters()
    data = figures(current_app.extensions["lbp_store"], filters)
    return render_template("dashboard.html", data=data, filters=filters, services=list(SERVICES), tiers=TIERS,
                           colours=TIER_COLOURS, charts=_charts(data),
                           generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))


@bp.post("/dashboard/login")
def login():
    given = request.form.get("token", "")
    if not hmac.compare_digest(given.encode(), _token().encode()):
        log.warning("dashboard login refused (wrong token) from %s", request.remote_addr)
        return _login(401, "That token is not the admin token.")
    response = redirect("/dashboard", code=303)
    settings = current_app.config["LBP_SETTINGS"]
    response.set_cookie(COOKIE, _serializer().dumps({"v": 1}), max_age=SESSION_SECONDS, path="/dashboard",
                        httponly=True, samesite="Strict",
                        secure=request.is_secure or settings.public_base_url.startswith("https://"))
    return response


@bp.post("/dashboard/logout")
def logout():
    response = redirect("/dashboard", code=303)
    response.delete_cookie(COOKIE, path="/dashboard", httponly=True, samesite="Strict")
    return response


def _login(status: int, message: str = ""):
    return render_template("dashboard_login.html", message=message), status


# ---------------------------------------------------------------- inline SVG charts

def _stacked_bars(days: list[dict], key: str, series: list[str], colours: dict[str, str], title: str) -> Markup:
    """Cards per day, stacked by series, as an SVG with a title and a legend (readable without script)."""
    width, height, left, bottom, top = 760, 220, 40, 36, 28
    plot_w, plot_h = width - left - 10, height - bottom - top
    totals = [sum(day[key].get(s, 0) for s in series) for day in days]
    peak = 4 * math.ceil(max(totals + [1]) / 4)  # four whole-number steps on the axis
    step = plot_w / max(len(days), 1)
    bar = max(step * 0.7, 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(title)}" class="chart">', f"<title>{escape(title)}</title>"]
    for i in range(5):
        value = peak * i / 4
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="axis">{value:g}</text>')
    for index, day in enumerate(days):
        x = left + index * step + (step - bar) / 2
        y = top + plot_h
        for name in series:
            count = day[key].get(name, 0)
            if not count:
                continue
            h = plot_h * count / peak
            y -= h
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                         f'fill="{colours[name]}"><title>{escape(day["date"])} {escape(name)}: {count}</title></rect>')
        if len(days) <= 14 or index % max(len(days) // 10, 1) == 0:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{height - bottom + 16}" text-anchor="middle" '
                         f'class="axis">{escape(day["date"][5:])}</text>')
    legend_x = left
    for name in series:
        parts.append(f'<rect x="{legend_x}" y="6" width="12" height="12" fill="{colours[name]}"/>'
                     f'<text x="{legend_x + 16}" y="16" class="legend">{escape(name)}</text>')
        legend_x += 24 + 8 * len(name)
    parts.append("</svg>")
    return Markup("".join(parts))


def _share_bars(rows: list[tuple[str, float | None, str]], title: str) -> Markup:
    """Horizontal bars of shares (0..1), one per row, labelled with the percentage."""
    width, row_h, label_w = 520, 26, 150
    height = row_h * len(rows) + 8
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(title)}" class="chart small"><title>{escape(title)}</title>']
    for i, (label, value, colour) in enumerate(rows):
        y = 4 + i * row_h
        w = (width - label_w - 60) * (value or 0)
        text = "–" if value is None else f"{value * 100:.1f} %"
        parts.append(f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end" class="legend">{escape(label)}</text>'
                     f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" fill="{colour}"/>'
                     f'<text x="{label_w + w + 6:.1f}" y="{y + 16}" class="legend">{text}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _charts(data: dict) -> dict[str, Markup]:
    days = data["cards_over_time"]
    hooks = sorted({h for day in days for h in day["hook"]})
    hook_colours = {h: HOOK_COLOURS[i % len(HOOK_COLOURS)] for i, h in enumerate(hooks)}
    burden = data["alert_burden"]
    return {
        "by_tier": _stacked_bars(days, "tier", list(TIERS), TIER_COLOURS, "Cards shown per day, by tier"),
        "by_hook": _stacked_bars(days, "hook", hooks, hook_colours, "Cards shown per day, by hook"),
        "burden_calls": _share_bars([(b["tier"], b["call_share"], TIER_COLOURS[b["tier"]]) for b in burden],
                                    "Share of calls that got a card, by tier"),
        "burden_patients": _share_bars([(b["tier"], b["patient_share"], TIER_COLOURS[b["tier"]]) for b in burden],
                                       "Share of patients who got a card, by tier"),
        "override_by_type": _share_bars([(t["tier"], t["override_rate"], TIER_COLOURS[t["tier"]])
                                         for t in data["by_card_type"]], "Override rate by card type"),
    }
