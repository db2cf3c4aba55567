"""The CDS committee's switches, applied to the response the clinical pipeline built.

- ``silent_mode``: assess and record, answer ``{"cards": []}`` without systemActions (a pilot).
- ``disabled_tiers``: only ``consider`` may be switched off.
- ``disabled_flags``: a card whose red flags are all disabled is held back. Flags that can raise an
  emergency, alone or with another, can never be disabled.
- snooze: after a clinician overrides a card with a reason saying the work-up is done, the same
  advice for the same patient is held back for ``snooze_days`` unless a new red flag appears or the
  tier rises.

Emergencies pass every switch untouched. Held-back cards are still recorded (with the switch that
held them), so the dashboard shows what would have fired.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import cards

from .store import TIER_RANK

KNOWLEDGE = Path(cards.__file__).parent / "knowledge"
DISABLEABLE_TIERS = ("consider",)
SNOOZABLE_TIERS = ("consider", "imaging")
NEVER_DISABLED_FLAGS = {
    "neuro-deficit": "raises an emergency (cord or cauda equina compression)",
    "bladder-bowel-dysfunction": "raises an emergency (cauda equina syndrome)",
    "saddle-anesthesia": "raises an emergency (cauda equina syndrome)",
    "cancer-history": "raises an emergency with a new neurological symptom (metastatic cord compression)",
    "metastatic-disease": "raises an emergency with a new neurological symptom (metastatic cord compression)",
    "myeloma": "raises an emergency with a new neurological symptom (metastatic cord compression)",
}


@cache
def knowledge(name: str) -> dict:
    return json.loads((KNOWLEDGE / name).read_text(encoding="utf-8"))


def known_flags() -> list[str]:
    return list(knowledge("red_flags.json")["flags"])


def rules_version() -> str:
    return knowledge("red_flags.json")["version"]


def work_up_done_reasons() -> tuple[tuple[str, str], ...]:
    """(system, code) of the override reasons that say the work-up is done (they start a snooze)."""
    recommendations = knowledge("recommendations.json")
    system = recommendations["code_systems"]["override_reason"]
    return tuple((system, code) for code in recommendations["work_up_done_override_reasons"])


def switch_problems(settings) -> list[str]:
    """Why these switches must not be used (the service refuses to start, naming the key)."""
    problems = []
    tiers = [t for t in settings.disabled_tiers if t not in DISABLEABLE_TIERS]
    if tiers:
        problems.append(f"setting 'disabled_tiers': {', '.join(tiers)} cannot be disabled; only "
                        f"{', '.join(DISABLEABLE_TIERS)} may be listed (emergency and imaging advice is never "
                        "switched off, and the order-time 'imaging not indicated' card is what the order hooks "
                        "are for)")
    unknown = [f for f in settings.disabled_flags if f not in known_flags()]
    if unknown:
        problems.append(f"setting 'disabled_flags': unknown red flag(s) {', '.join(unknown)}; known: "
                        f"{', '.join(known_flags())}")
    forbidden = [f for f in settings.disabled_flags if f in NEVER_DISABLED_FLAGS]
    if forbidden:
        problems.append("setting 'disabled_flags': " + "; ".join(
            f"{f} cannot be disabled: it {NEVER_DISABLED_FLAGS[f]}" for f in forbidden))
    return problems


@dataclass
class Switched:
    response: dict  # what the EHR receives
    held_back: dict[str, str] = field(default_factory=dict)  # card uuid -> silent | snoozed | disabled-*
    silent: bool = False
    snoozed: bool = False


def _ext(card: dict) -> dict:
    return (card.get("extension") or {}).get("lbp-redflags") or {}


def apply_switches(response: dict, settings, snoozes: Callable[[], list[tuple[str, set[str]]]]) -> Switched:
    """Filter `response` by the switches; `snoozes()` gives (tier, flags) of advice the clinician said is done."""
    cards_in = response.get("cards") or []
    emergency = [c for c in cards_in if _ext(c).get("tier") == "emergency"]
    if settings.silent_mode:
        if emergency:
            return Switched(response)  # never silenced: the clinician sees exactly what they would
        return Switched({"cards": []}, {c["uuid"]: "silent" for c in cards_in}, silent=True)

    held: dict[str, str] = {}
    done: list[tuple[str, set[str]]] | None = None
    for card in cards_in:
        ext = _ext(card)
        tier, flags = ext.get("tier", "none"), set(ext.get("redFlags", []))
        if tier == "emergency":
            continue
        if tier in settings.disabled_tiers:
            held[card["uuid"]] = "disabled-tier"
        elif flags and flags <= set(settings.disabled_flags):
            held[card["uuid"]] = "disabled-flag"
        elif settings.snooze_days and tier in SNOOZABLE_TIERS and not ext.get("followUp"):
            done = snoozes() if done is None else done
            if any(TIER_RANK.get(prior_tier, 0) >= TIER_RANK[tier] and flags <= prior_flags
                   for prior_tier, prior_flags in done):
                held[card["uuid"]] = "snoozed"
    if not held:
        return Switched(response)
    shown = dict(response, cards=[c for c in cards_in if c["uuid"] not in held])
    return Switched(shown, held, snoozed="snoozed" in held.values())
