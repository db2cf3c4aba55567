"""The knowledge files the rules and cards read, where they live, and the rules version they make.

``KNOWLEDGE_DIR`` (and ``fhir_mappings.terminology.VALUESET_DIR``) can be pointed elsewhere, then
``reload()``: a clinician's new flag can be tried from a copy of the files without touching the code.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path

import fhir_mappings
from fhir_mappings import findings, terminology

KNOWLEDGE_DIR = Path(__file__).resolve().parent / "knowledge"
FHIR_MAPPINGS_DIR = Path(fhir_mappings.__file__).resolve().parent


@cache
def knowledge_file(name: str) -> dict:
    return json.loads((KNOWLEDGE_DIR / f"{name}.json").read_text(encoding="utf-8"))


def red_flags() -> dict:
    return knowledge_file("red_flags")


def recommendations() -> dict:
    return knowledge_file("recommendations")


def threshold(name: str) -> float:
    return red_flags()["thresholds"][name]["value"]


@cache
def rules_version() -> str:
    """Release number + a content hash of every knowledge and value-set file: audit records carry it,
    so it changes whenever any rule, threshold, code or synonym changes."""
    digest = hashlib.sha256()
    files = sorted(KNOWLEDGE_DIR.glob("*.json")) + sorted(Path(terminology.VALUESET_DIR).glob("*.json")) + sorted(
        FHIR_MAPPINGS_DIR.glob("*.json"))
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return f"{red_flags()['version']}+{digest.hexdigest()[:12]}"


def reload() -> None:
    """Forget every loaded knowledge and value-set file (after pointing the directories elsewhere)."""
    knowledge_file.cache_clear()
    rules_version.cache_clear()
    terminology.reload()
    findings.value_sets_read_from.cache_clear()
