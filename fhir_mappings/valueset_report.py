"""Per concept: how many codes of each system a value set holds, and where they came from.

Read from the files themselves (valuesets/*.json and the published expansions they name), so the
report is what the matcher uses, for a clinician or a CDS committee to review.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .terminology import SYSTEM_NAMES, VALUESET_DIR, all_value_sets, normalise_system, published_expansion


@dataclass
class SystemCoverage:
    system: str
    codes: set[str] = field(default_factory=set)
    prefixes: int = 0
    ranges: int = 0
    sources: dict[str, int] = field(default_factory=dict)  # where from -> codes it contributes

    @property
    def name(self) -> str:
        return SYSTEM_NAMES.get(self.system, self.system)


@dataclass
class Coverage:
    id: str
    title: str
    include: dict[str, SystemCoverage]
    exclude: dict[str, SystemCoverage]
    snomed_roots: dict[str, str]
    fallback_words: int
    fallback_vetoes: int
    synonyms: int


def _published_label(name: str) -> str:
    data = published_expansion(name)
    parts = [f"{s['oid']} {s['name']} v{s['version']}" for s in data["source"]]
    return f"published/{name}.json (VSAC {'; '.join(parts)})"


def _section(data: dict, section: str) -> dict[str, SystemCoverage]:
    out: dict[str, SystemCoverage] = {}
    for system, body in (data.get(section) or {}).items():
        system = normalise_system(system)
        entry = out.setdefault(system, SystemCoverage(system))
        codes = set(body.get("codes") or {})
        entry.codes |= codes
        entry.prefixes += len(body.get("prefixes") or ())
        entry.ranges += len(body.get("ranges") or ())
        if codes:
            entry.sources[f"{data['id']}.json"] = len(codes)
    for name in (data.get("published") or {}).get(section) or ():
        expansion = published_expansion(name)
        system = normalise_system(expansion["system"])
        entry = out.setdefault(system, SystemCoverage(system))
        entry.codes |= set(expansion["codes"])
        entry.sources[_published_label(name)] = len(expansion["codes"])
    return out


def coverage(name: str) -> Coverage:
    data = json.loads((VALUESET_DIR / f"{name}.json").read_text(encoding="utf-8"))
    snomed = data.get("snomed") or {}
    fallback = snomed.get("fallback") or {}
    return Coverage(name, data["title"], _section(data, "include"), _section(data, "exclude"),
                    dict(snomed.get("roots") or {}), len(fallback.get("words") or ()),
                    len(fallback.get("exclude") or ()), len((data.get("text") or {}).get("synonyms") or ()))


def _lines(label: str, systems: dict[str, SystemCoverage]) -> list[str]:
    out = []
    for entry in sorted(systems.values(), key=lambda e: e.name):
        rules = [f"{len(entry.codes)} codes"]
        if entry.prefixes:
            rules.append(f"{entry.prefixes} prefixes")
        if entry.ranges:
            rules.append(f"{entry.ranges} ranges")
        out.append(f"  {label} {entry.name}: {', '.join(rules)}")
        out += [f"      {count:>6} from {source}" for source, count in entry.sources.items()]
    return out


def report(names: list[str] | None = None) -> str:
    """The plain-text report printed by ``lbp-redflags valuesets --report``."""
    lines = []
    for name in names or all_value_sets():
        c = coverage(name)
        lines.append(f"{c.id} — {c.title}")
        lines += _lines("include", c.include) or ["  include: no codes (text only)"]
        lines += _lines("exclude", c.exclude)
        if c.snomed_roots:
            roots = ", ".join(f"{code} {display}" for code, display in c.snomed_roots.items())
            lines.append(f"  SNOMED CT hierarchy roots (terminology server): {roots}")
        if c.fallback_words:
            lines.append(f"  unlisted SNOMED CT codes: display fallback with {c.fallback_words} words, "
                         f"{c.fallback_vetoes} vetoes")
        lines.append(f"  text: {c.synonyms} synonyms")
        lines.append("")
    return "\n".join(lines)
