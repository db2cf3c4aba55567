"""FHIR dates, dateTimes and instants read the one way every reader of the record needs."""

from __future__ import annotations

from datetime import UTC, date, datetime


def parse_date(value, *, end: bool = False) -> date | None:
    """A FHIR date/dateTime/instant → date. Partial dates become the first (or, end=True, last) day."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    try:
        year = int(value[:4])
        if len(value) >= 10:
            return date(year, int(value[5:7]), int(value[8:10]))
        if len(value) >= 7:
            month = int(value[5:7])
            if not end:
                return date(year, month, 1)
            nxt = date(year + (month == 12), month % 12 + 1, 1)
            return date.fromordinal(nxt.toordinal() - 1)
        return date(year, 12, 31) if end else date(year, 1, 1)
    except ValueError:
        return None


def instant(value) -> datetime | None:
    """A FHIR date, dateTime or instant as an aware datetime (a date, or a partial one: its first day, UTC)."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    try:
        moment = datetime.fromisoformat(value) if len(value) > 10 else None
    except ValueError:
        moment = None
    if moment is None:
        day = parse_date(value)
        return datetime(day.year, day.month, day.day, tzinfo=UTC) if day else None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
