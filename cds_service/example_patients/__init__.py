"""Bundled example patients (transaction Bundles) and the relative-date tokens they are written in.

Dates in examples and test cases are written relative to the day of use — "@today", "@today-50y",
"@today-30d+1d", "@today-3dT09:00:00Z" — so a patient who is "3 weeks into low back pain" stays so
whenever the demo or the tests run.
"""

from __future__ import annotations

import calendar
import json
import re
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
