"""Bundled example patients (transaction Bundles) and the relative-date tokens they are written in.

Dates in examples and test cases are written relative to the day of use — "@today", "@today-50y",
"@today-30d+1d", "@today-3dT09:00:00Z" — so a patient who is "3 weeks into low back pain" stays so
whenever the demo or the tests run.
"""

from __future__ import annotations

import calendar
import json
import re
import uuid
from datetime import date, timedelta
from pathlib import Path

HERE = Path(__file__).parent
_TOKEN = re.compile(r"^@today((?:[+-]\d+[ymwd])*)(T[0-9:.]+(?:Z|[+-]\d\d:\d\d)?)?$")
_STEP = re.compile(r"([+-])(\d+)([ymwd])")


def _shift(day: date, sign: str, amount: int, unit: str) -> date:
    n = amount if sign == "+" else -amount
    if unit == "d":
        return day + timedelta(days=n)
    if unit == "w":
        return day + timedelta(weeks=n)
    months = n * 12 if unit == "y" else n
    total = day.year * 12 + (day.month - 1) + months
    year, month = divmod(total, 12)
    month += 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def resolve_dates(value, today: date):
    """Replace every "@today…" string in a JSON-like structure with an ISO date (or dateTime)."""
    if isinstance(value, dict):
        return {k: resolve_dates(v, today) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_dates(v, today) for v in value]
    if isinstance(value, str) and value.startswith("@today"):
        match = _TOKEN.match(value)
        if not match:
            raise ValueError(f"bad relative date: {value}")
        day = today
        for sign, amount, unit in _STEP.findall(match.group(1)):
            day = _shift(day, sign, int(amount), unit)
        return day.isoformat() + (match.group(2) or "")
    return value


def examples(today: date) -> list[dict]:
    """Each example: title, hook, encounterId (optional), file and its resolved transaction Bundle."""
    index = json.loads((HERE / "index.json").read_text(encoding="utf-8"))
    out = []
    for item in index["examples"]:
        bundle = json.loads((HERE / item["file"]).read_text(encoding="utf-8"))
        out.append({**item, "bundle": resolve_dates(bundle, today)})
    return out


def load_file(path: Path, today: date) -> dict:
    return resolve_dates(json.loads(Path(path).read_text(encoding="utf-8")), today)


SERVICE_FOR_HOOK = {
    "patient-view": "lbp-patient-view",
    "encounter-start": "lbp-encounter-start",
    "order-select": "lbp-imaging-order-select",
    "order-sign": "lbp-imaging-order-sign",
}


def hook_request(hook: str, resources: list[dict], *, draft_orders: list[dict] = (),
                 selections: list[str] | None = None, encounter_id: str | None = None,
                 with_prefetch: bool = True, user_id: str = "Practitioner/demo") -> tuple[str, dict]:
    """(service id, request body) for a hook call about these resources, as an EHR would send it."""
    from ..prefetch import prefetch_for

    patient = next(r for r in resources if r["resourceType"] == "Patient")
    context = {"userId": user_id, "patientId": patient["id"]}
    if encounter_id:
        context["encounterId"] = encounter_id
    if hook in ("order-select", "order-sign"):
        context["draftOrders"] = {"resourceType": "Bundle", "type": "collection",
                                  "entry": [{"resource": r} for r in draft_orders]}
        if hook == "order-select":
            context["selections"] = selections or [f"ServiceRequest/{r['id']}" for r in draft_orders]
    body = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context}
    if with_prefetch:
        body["prefetch"] = prefetch_for(resources)
    return SERVICE_FOR_HOOK[hook], body
