"""The one table of tiers: their order (lowest first), card indicator and label, from red_flags.json."""

from __future__ import annotations

from .data import red_flags

TIER_IDS = tuple(t["id"] for t in red_flags()["tiers"])  # lowest first


def tier_table() -> dict[str, dict]:
    return {t["id"]: t for t in red_flags()["tiers"]}


def indicator(tier: str) -> str:
    return tier_table()[tier]["indicator"]


def rank(tier: str) -> int:
    return TIER_IDS.index(tier)
