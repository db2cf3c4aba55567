"""The override report: what fired, for how many patients, what clinicians did with it.

Computed from the audit tables for a date range (UTC days, inclusive) and optionally one service.
Everything is anchored on the hook calls and cards of the range; feedback counts for the card it
is about. The dashboard page, data.json and export.csv all read the figures from here.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import select

from .store import Store, feedback_items, hook_calls, issued_cards, utc
from .switches import knowledge

TIERS = ("emergency", "imaging", "consider", "none")
DEFAULT_DAYS = 30


@dataclass(frozen=True)
class Filters:
    start: date
    end: date  # inclusive
    service: str | None = None

    @property
    def since(self) -> datetime:
        return datetime.combine(self.start, time.min, UTC)

    @property
    def until(self) -> datetime:
        return datetime.combine(self.end + timedelta(days=1), time.min, UTC)

    def as_dict(self) -> dict:
        return {"from": self.start.isoformat(), "to": self.end.isoformat(), "service": self.service}


def default_filters(today: date | None = None) -> Filters:
    today = today or datetime.now(UTC).date()
    return Filters(today - timedelta(days=DEFAULT_DAYS - 1), today)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (a value that was actually observed)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def reason_labels() -> dict[tuple[str, str], str]:
    recommendations = knowledge("recommendations.json")
    system = recommendations["code_systems"]["override_reason"]
    return {(system, r["code"]): r["display"] for reasons in recommendations["override_reasons"].values()
            for r in reasons}


def load(store: Store, filters: Filters) -> tuple[list, list, list]:
    """(calls, cards, feedback items) of the range."""
    calls_q = select(hook_calls).where(hook_calls.c.called_at >= filters.since, hook_calls.c.called_at < filters.until)
    cards_q = select(issued_cards).where(issued_cards.c.issued_at >= filters.since,
                                         issued_cards.c.issued_at < filters.until)
    feedback_q = (select(feedback_items).join(issued_cards, issued_cards.c.uuid == feedback_items.c.card_uuid)
                  .where(issued_cards.c.issued_at >= filters.since, issued_cards.c.issued_at < filters.until))
    if filters.service:
        calls_q = calls_q.where(hook_calls.c.service_id == filters.service)
        cards_q = cards_q.where(issued_cards.c.service_id == filters.service)
        feedback_q = feedback_q.where(issued_cards.c.service_id == filters.service)
    with store.engine.connect() as conn:
        calls = list(conn.execute(calls_q.order_by(hook_calls.c.id)).mappings())
        cards = list(conn.execute(cards_q.order_by(issued_cards.c.issued_at, issued_cards.c.uuid)).mappings())
        items = list(conn.execute(feedback_q.order_by(feedback_items.c.outcome_at, feedback_items.c.id)).mappings())
    return calls, cards, items


def figures(store: Store, filters: Filters) -> dict:
    calls, cards, items = load(store, filters)
    hook_of_call = {c["id"]: c["hook"] for c in calls}
    shown = [c for c in cards if c["shown"]]
    latest: dict[str, str] = {}  # card uuid -> outcome of its latest feedback item
    for item in items:
        latest[item["card_uuid"]] = item["outcome"]

    # cards per day, by tier and by hook
    days = [filters.start + timedelta(days=i) for i in range((filters.end - filters.start).days + 1)]
    per_day = {d.isoformat(): {"date": d.isoformat(), "tier": Counter(), "hook": Counter()} for d in days}
    for card in shown:
        day = per_day.get(utc(card["issued_at"]).date().isoformat())
        if day is not None:
            day["tier"][card["tier"]] += 1
            day["hook"][hook_of_call.get(card["call_id"], "unknown")] += 1
    over_time = [{"date": d["date"], "tier": {t: d["tier"][t] for t in TIERS},
                  "hook": dict(sorted(d["hook"].items()))} for d in per_day.values()]

    # alert burden: share of calls, and of distinct patients, that got (or would have got) a card of each tier
    shown_tiers: dict[int, set[str]] = defaultdict(set)
    assessed_tiers: dict[int, set[str]] = defaultdict(set)
    for card in cards:
        assessed_tiers[card["call_id"]].add(card["tier"])
        if card["shown"]:
            shown_tiers[card["call_id"]].add(card["tier"])
    patients = {c["patient_key"] for c in calls if c["patient_key"]}
    burden = []
    for tier in TIERS:
        got = [c for c in calls if tier in shown_tiers.get(c["id"], ())]
        would = [c for c in calls if tier in assessed_tiers.get(c["id"], ())]
        got_patients = {c["patient_key"] for c in got if c["patient_key"]}
        burden.append({"tier": tier, "calls": len(got), "call_share": share(len(got), len(calls)),
                       "patients": len(got_patients), "patient_share": share(len(got_patients), len(patients)),
                       "calls_had_it_fired": len(would), "call_share_had_it_fired": share(len(would), len(calls))})

    def rates(group: list) -> dict:
        accepted = sum(1 for c in group if latest.get(c["uuid"]) == "accepted")
        overridden = sum(1 for c in group if latest.get(c["uuid"]) == "overridden")
        return {"shown": len(group), "accepted": accepted, "overridden": overridden,
                "no_feedback": len(group) - accepted - overridden,
                "acceptance_rate": share(accepted, len(group)), "override_rate": share(overridden, len(group))}

    by_type = [{"tier": t, **rates([c for c in shown if c["tier"] == t])} for t in TIERS]
    flag_order = list(knowledge("red_flags.json")["flags"])
    flags_seen = sorted({f for c in shown for f in json.loads(c["red_flags"])},
                        key=lambda f: flag_order.index(f) if f in flag_order else len(flag_order))
    by_flag = [{"flag": f, "label": knowledge("red_flags.json")["flags"].get(f, {}).get("label", f),
                **rates([c for c in shown if f in json.loads(c["red_flags"])])} for f in flags_seen]

    labels = reason_labels()
    tier_of_card = {c["uuid"]: c["tier"] for c in cards}
    reasons = Counter((i["override_system"], i["override_code"]) for i in items if i["outcome"] == "overridden")
    ranked = [{"system": system, "code": code,
               "display": labels.get((system, code)) or (code or "(no reason given)"), "count": count}
              for (system, code), count in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0][1] or "~"))]
    comments = [{"date": utc(i["outcome_at"]).date().isoformat(), "tier": tier_of_card.get(i["card_uuid"]),
                 "outcome": i["outcome"], "reason": labels.get((i["override_system"], i["override_code"]))
                 or i["override_code"], "comment": i["user_comment"]}
                for i in reversed(items) if i["user_comment"]][:20]

    latencies = [c["latency_ms"] for c in calls]
    held = Counter(c["held_back_by"] for c in cards if not c["shown"])
    return {
        "filters": filters.as_dict(),
        "rules_versions": sorted({c["rules_version"] for c in calls if c["rules_version"]}),
        "totals": {
            "calls": len(calls),
            "patients": len(patients),
            "cards_issued": len(shown),
            "cards_held_back": dict(sorted(held.items())),
            "calls_silent": sum(1 for c in calls if c["silent"]),
            "calls_snoozed": sum(1 for c in calls if c["snoozed"]),
            "feedback": {"accepted": sum(1 for i in items if i["outcome"] == "accepted"),
                         "overridden": sum(1 for i in items if i["outcome"] == "overridden"),
                         "cards_with_feedback": len(latest)},
        },
        "cards_over_time": over_time,
        "alert_burden": burden,
        "by_card_type": by_type,
        "by_red_flag": by_flag,
        "override_reasons": ranked,
        "recent_comments": comments,
        "latency_ms": {"median": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95)},
        "fhir_fetch": {"calls": sum(1 for c in calls if c["fetched_from_fhir"]),
                       "share": share(sum(1 for c in calls if c["fetched_from_fhir"]), len(calls))},
    }


CSV_COLUMNS = ("issued_at", "service_id", "hook_instance", "card_uuid", "tier", "indicator", "red_flags", "shown",
               "held_back_by", "patient_key", "rules_version", "outcome", "outcome_at", "override_system",
               "override_code", "override_display", "user_comment", "accepted_suggestions")


def csv_rows(store: Store, filters: Filters):
    """One row per card of the range and feedback item on it (a card without feedback: one row, no outcome)."""
    _, cards, items = load(store, filters)
    labels = reason_labels()
    by_card: dict[str, list] = defaultdict(list)
    for item in items:
        by_card[item["card_uuid"]].append(item)
    for card in cards:
        base = [utc(card["issued_at"]).isoformat(), card["service_id"], card["hook_instance"], card["uuid"],
                card["tier"], card["indicator"], " ".join(json.loads(card["red_flags"])),
                "yes" if card["shown"] else "no", card["held_back_by"] or "", card["patient_key"] or "",
                card["rules_version"]]
        for item in by_card.get(card["uuid"]) or [None]:
            if item is None:
                yield base + [""] * 7
                continue
            yield base + [item["outcome"], utc(item["outcome_at"]).isoformat(), item["override_system"] or "",
                          item["override_code"] or "", labels.get((item["override_system"], item["override_code"]), ""),
                          item["user_comment"] or "", " ".join(json.loads(item["accepted_suggestions"]))]
