"""Matching FHIR CodeableConcepts and free text against the value sets in valuesets/*.json.

Codes first (system + code; ICD-10-CM prefixes and category ranges, dots and case ignored; the
codes of the published expansions in valuesets/published/ a set names), then text (whole-word
phrases, read by fhir_mappings.text: negated, someone else's or hypothetical mentions do not count).
A code the value set excludes vetoes the whole concept, so "C44.91 Basal cell carcinoma" never
matches malignancy by its text.

A SNOMED CT code no list names is a descendant the lists missed, or another concept: a configured
terminology server's answer decides (handed in as plain data through ``server_answers``), and
without one a guarded reading of its display (the set's ``snomed.fallback`` words and vetoes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from types import MappingProxyType

from .text import Mention, Vocabularies, any_of, counts, phrases

VALUESET_DIR = Path(__file__).parent / "valuesets"
PUBLISHED_DIR = VALUESET_DIR / "published"

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CPT = "http://www.ama-assn.org/go/cpt"
HCPCS = "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"

SYSTEM_ALIASES = {
    "http://hl7.org/fhir/sid/icd-10": ICD10CM,
    "urn:oid:2.16.840.1.113883.6.90": ICD10CM,
    "urn:oid:2.16.840.1.113883.6.3": ICD10CM,
    "urn:oid:2.16.840.1.113883.6.96": SNOMED,
    "http://snomed.info/id": SNOMED,
    "urn:oid:2.16.840.1.113883.6.1": LOINC,
    "urn:oid:2.16.840.1.113883.6.88": RXNORM,
    "urn:oid:2.16.840.1.113883.6.12": CPT,
    "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets": HCPCS,
    "urn:oid:2.16.840.1.113883.6.285": HCPCS,
}
SYSTEM_NAMES = {ICD10CM: "ICD-10-CM", SNOMED: "SNOMED CT", LOINC: "LOINC", RXNORM: "RxNorm", CPT: "CPT",
                HCPCS: "HCPCS"}

# A clause ends at sentence punctuation, at "but"/"however", and at a comma that starts a new
# statement ("denies fever, reports new urinary retention").
CLAUSE_BREAK = re.compile(
    r"[.;\n|!?]|\bbut\b|\bhowever\b|\balthough\b|,\s*(?:and\s+)?(?=(?:reports?|complains? of|c/o|has|have|had|"
    r"presents? with|notes?|describes?|admits?|now|new|on examination|o/e)\b)")

# (value set id, SNOMED CT code) -> is the code in the set, as a terminology server answered for
# this request. Empty unless the service layer was configured with a server and asked it.
_SERVER_ANSWERS: ContextVar[Mapping[tuple[str, str], bool]] = ContextVar(
    "terminology_server_answers", default=MappingProxyType({}))


@contextmanager
def server_answers(answers: Mapping[tuple[str, str], bool]) -> Iterator[None]:
    """Let the matchers use a terminology server's verdicts on unlisted SNOMED CT codes."""
    token = _SERVER_ANSWERS.set(MappingProxyType(dict(answers)))
    try:
        yield
    finally:
        _SERVER_ANSWERS.reset(token)


def normalise_system(system: str | None) -> str | None:
    if not isinstance(system, str):
        return None
    return _normalised_system(system)


@lru_cache(maxsize=1024)
def _normalised_system(system: str) -> str:
    system = system.strip().rstrip("/")
    return SYSTEM_ALIASES.get(system, system)


def _icd(code: str) -> str:
    return code.replace(".", "").strip().upper()


@dataclass(frozen=True)
class Match:
    how: str  # "code" or "text"
    system: str | None
    code: str | None
    display: str


class _CodeRule:
    """Codes, prefixes and ranges of one system (ICD-10-CM compared without dots, case-insensitive)."""

    def __init__(self, system: str, spec: dict):
        self.icd = system == ICD10CM
        codes = spec.get("codes") or {}
        self.displays = {self._norm(c): d for c, d in (codes.items() if isinstance(codes, dict)
                                                        else ((c, "") for c in codes))}
        self.prefixes = tuple(self._norm(p) for p in spec.get("prefixes") or ())
        self.ranges = [(self._norm(a)[:3], self._norm(b)[:3]) for a, b in spec.get("ranges") or ()]

    def _norm(self, code: str) -> str:
        return _icd(code) if self.icd else code.strip()

    def add(self, codes: dict[str, str]) -> None:
        for code, display in codes.items():
            self.displays.setdefault(self._norm(code), display)

    def find(self, code: str) -> str | None:
        """The display of the matching entry ('' when matched by prefix or range), or None."""
        key = self._norm(code)
        if key in self.displays:
            return self.displays[key]
        if any(key.startswith(p) for p in self.prefixes):
            return ""
        if self.icd and len(key) >= 3 and any(a <= key[:3] <= b for a, b in self.ranges):
            return ""
        return None


@cache
def published_expansion(name: str) -> dict:
    """One published expansion file (valuesets/published/<name>.json): its system, codes and provenance."""
    return json.loads((PUBLISHED_DIR / f"{name}.json").read_text(encoding="utf-8"))


def all_published_expansions() -> list[str]:
    return sorted(p.stem for p in PUBLISHED_DIR.glob("*.json"))


def _text_vocabularies(data: dict) -> dict[str, list[str]]:
    """A value set's phrase lists for the shared matcher: synonyms, text vetoes, SNOMED CT fallback words, vetoes."""
    text = data.get("text") or {}
    fallback = (data.get("snomed") or {}).get("fallback") or {}
    return {f"{data['id']}#synonyms": phrases(text.get("synonyms")),
            f"{data['id']}#vetoes": phrases(text.get("exclude")),
            f"{data['id']}#fallback": phrases(fallback.get("words")),
            f"{data['id']}#fallback-vetoes": phrases(fallback.get("exclude"))}


CONCEPTS_CACHED = 4096  # per value set: distinct (text, codings) answers kept
_NOT_LISTED = (None, False)  # (display if included, whether excluded) for a code the set does not name


class ValueSet:
    """One value set: its code lists and text vocabularies.

    Sets loaded through ``value_set()`` share one text matcher over every set's vocabularies and
    one code index per (system, code); a set built on its own data gets its own.
    """

    def __init__(self, data: dict, *, vocabularies: Vocabularies | None = None, shared_codes: bool = False):
        self.id = data["id"]
        self.title = data.get("title", self.id)
        self.source = data.get("source", [])
        self.include = {normalise_system(s): _CodeRule(normalise_system(s), spec)
                        for s, spec in (data.get("include") or {}).items()}
        self.exclude = {normalise_system(s): _CodeRule(normalise_system(s), spec)
                        for s, spec in (data.get("exclude") or {}).items()}
        published = data.get("published") or {}
        for section, rules in (("include", self.include), ("exclude", self.exclude)):
            for name in published.get(section) or ():
                expansion = published_expansion(name)
                system = normalise_system(expansion["system"])
                rules.setdefault(system, _CodeRule(system, {})).add(expansion["codes"])
        text = data.get("text") or {}
        self._vetoes = any_of(text.get("exclude"))
        self._vocabularies = vocabularies or Vocabularies(_text_vocabularies(data))
        self._synonyms_key, self._vetoes_key = f"{self.id}#synonyms", f"{self.id}#vetoes"
        self._fallback_key = f"{self.id}#fallback"
        patterns = self._vocabularies.patterns
        self._has_synonyms = self._synonyms_key in patterns
        self._has_fallback = self._fallback_key in patterns
        self._has_vetoes = self._vetoes_key in patterns
        self._shared_codes = shared_codes
        self._memo = lru_cache(maxsize=CONCEPTS_CACHED)(self._match_key)
        snomed = data.get("snomed") or {}
        self.snomed_roots = tuple(snomed.get("roots") or ())
        self.snomed_exclude_roots = tuple(snomed.get("excludeRoots") or ())

    def lists(self, system: str | None, code: str) -> bool:
        """Whether the set's own lists (included or excluded) name this code."""
        return self._code_verdict(normalise_system(system), code) != _NOT_LISTED

    def _code_verdict(self, system: str | None, code: str) -> tuple[str | None, bool]:
        """(display if the set includes the code, whether it excludes it); normalised system."""
        if self._shared_codes:
            return _code_index(system, code).get(self.id, _NOT_LISTED)
        return self._lookup(system, code)

    def _lookup(self, system: str | None, code: str) -> tuple[str | None, bool]:
        included = self.include[system].find(code) if system in self.include else None
        excluded = system in self.exclude and self.exclude[system].find(code) is not None
        return included, excluded

    def codes_for(self, system: str) -> list[str]:
        rule = self.include.get(normalise_system(system))
        return list(rule.displays) if rule else []

    def match(self, concept) -> Match | None:
        """A match by code, else by text; memoised on the concept's codings and text (not its resource)."""
        if not isinstance(concept, dict):
            return None
        if _SERVER_ANSWERS.get():  # this request's server verdicts: not for the cache
            return self._match(concept)
        coding = concept.get("coding")
        codings = tuple([(c.get("system"), c.get("code"), c.get("display")) for c in coding if isinstance(c, dict)]) \
            if isinstance(coding, list) else ()
        try:
            return self._memo((concept.get("text"), codings))
        except TypeError:  # unhashable: a list or object where FHIR has a string
            return self._match(concept)

    def _match_key(self, key: tuple) -> Match | None:
        text, codings = key
        return self._match({"text": text, "coding": [{"system": s, "code": c, "display": d} for s, c, d in codings]})

    def _match(self, concept: dict) -> Match | None:
        codings = [c for c in concept.get("coding") or () if isinstance(c, dict)] \
            if isinstance(concept.get("coding"), list) else []
        texts: list[str] = []
        fallback_texts: list[str] = []
        coded = []
        for coding in codings:
            system, code = normalise_system(coding.get("system")), coding.get("code")
            verdict = self._code_verdict(system, code) if isinstance(code, str) else _NOT_LISTED
            if verdict[1]:
                return None
            coded.append((coding, system, code, verdict))
        for coding, system, code, (found, excluded) in coded:
            display = coding.get("display") if isinstance(coding.get("display"), str) else ""
            if found is not None:
                return Match("code", system, code, display or found or self.title)
            if isinstance(code, str) and system == SNOMED and not excluded:
                verdict = _SERVER_ANSWERS.get().get((self.id, code.strip()))
                if verdict is True:
                    return Match("code", system, code, display or self.title)
                if verdict is False:
                    continue  # the server's "no" is final
                if self._has_fallback:
                    fallback_texts.extend(t for t in (display, concept.get("text")) if isinstance(t, str) and t)
                    continue  # only the guarded fallback reads an unlisted code's display
            if isinstance(code, str) and system in self.include:
                continue  # a code's display says no more than the code, which did not match
            if display:
                texts.append(display)
        if isinstance(concept.get("text"), str):
            if self._has_vetoes and self._vocabularies.hits(concept["text"]).of(self._vetoes_key):
                return None  # the concept's own text qualifies it ("risk-reducing mastectomy"): no text match
            texts.insert(0, concept["text"])
        for text in texts:
            found = self.match_text(text)
            if found is not None:
                return found
        for text in fallback_texts:
            found = self._match_fallback(text)
            if found is not None:
                return found
        return None

    def _match_fallback(self, text: str) -> Match | None:
        """The guarded reading of an unlisted SNOMED CT concept's display or text: a fallback word,
        no fallback veto or text veto anywhere in it, not negated or about a relative."""
        if not self._has_fallback:
            return None
        hits = self._vocabularies.hits(text)
        if self._fallback_key in hits.verdicts:
            return hits.verdicts[self._fallback_key]
        found = None
        if not (hits.of(f"{self.id}#fallback-vetoes") or hits.of(self._vetoes_key)):
            for start, end in hits.of(self._fallback_key):
                if counts(hits.mention(self._fallback_key, start, end), note=False):
                    found = Match("text", None, None, text[start:end])
                    break
        hits.verdicts[self._fallback_key] = found
        return found

    def match_code(self, concept) -> Match | None:
        """A match by code only (labs and vitals are identified by their LOINC code, never by text)."""
        found = self.match(concept)
        return found if found is not None and found.how == "code" else None

    def match_text(self, text, *, note: bool = False) -> Match | None:
        """A match on free text: a concept's text or display (``note=False``) or a note (see text.counts)."""
        found = self.mention_in(text, note=note)
        return Match("text", None, None, found.words) if found is not None else None

    def mention_in(self, text, *, note: bool = True) -> Mention | None:
        """The first synonym of this set in ``text`` that counts as a current finding of the patient."""
        if not self._has_synonyms or not isinstance(text, str) or not text.strip():
            return None
        hits = self._vocabularies.hits(text)
        verdict_key = f"{self.id}#{'note' if note else 'concept'}"
        if verdict_key in hits.verdicts:
            return hits.verdicts[verdict_key]
        found = None
        lowered = hits.lowered
        for start, end in hits.of(self._synonyms_key):
            if self._vetoes is not None and self._vetoes.search(_clause(lowered, start, end)):
                continue  # a veto phrase speaks only for its own clause
            mention = hits.mention(self._synonyms_key, start, end)
            if counts(mention, note=note):
                found = mention
                break
        hits.verdicts[verdict_key] = found
        return found


CLAUSE_REACH = 200  # a clause is looked for this far either side of a mention, not across a whole note


def _clause(text: str, start: int, end: int) -> str:
    before, after = text[max(start - CLAUSE_REACH, 0):start], text[end:end + CLAUSE_REACH]
    return CLAUSE_BREAK.split(before)[-1] + text[start:end] + CLAUSE_BREAK.split(after)[0]


@cache
def _value_set_data(name: str) -> dict:
    return json.loads((VALUESET_DIR / f"{name}.json").read_text(encoding="utf-8"))


@cache
def shared_vocabularies() -> Vocabularies:
    """Every value set's text vocabularies behind one matcher."""
    vocabularies: dict[str, list[str]] = {}
    focus: set[str] = set()
    for name in all_value_sets():
        data = _value_set_data(name)
        vocabularies.update(_text_vocabularies(data))
        if _read_from_text(data):
            focus.update(k for k in _text_vocabularies(data) if k.endswith(("#synonyms", "#fallback")))
    return Vocabularies(vocabularies, frozenset(focus))


FREE_TEXT = {"DocumentReference": None, "DiagnosticReport": None, "Condition": "note", "Observation": "note"}


def _read_from_text(data: dict) -> bool:
    """Whether the set is read from notes or free-text fields (its ``readFrom``)."""
    read_from = data.get("readFrom") or {}
    return any(kind in read_from and (element is None or element in read_from[kind])
               for kind, element in FREE_TEXT.items())


@cache
def value_set(name: str) -> ValueSet:
    return ValueSet(_value_set_data(name), vocabularies=shared_vocabularies(), shared_codes=True)


@lru_cache(maxsize=16384)
def _code_index(system: str | None, code: str) -> dict[str, tuple[str | None, bool]]:
    """For one (normalised system, code): each value set that names it, with its verdict.

    Looked up once per distinct code across all value sets, however many sets ask.
    """
    index = {}
    for name in all_value_sets():
        vs = value_set(name)
        verdict = vs._lookup(system, code)
        if verdict != _NOT_LISTED:
            index[vs.id] = verdict
    return index


@cache
def _value_set_names() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in VALUESET_DIR.glob("*.json")))


def all_value_sets() -> list[str]:
    return list(_value_set_names())


def reload() -> None:
    """Forget every loaded value set and what was derived from them (after pointing VALUESET_DIR elsewhere)."""
    for cached in (_value_set_data, shared_vocabularies, value_set, _code_index, _value_set_names,
                   published_expansion):
        cached.cache_clear()


def coding_label(concept) -> str:
    """Short human-readable label: text, else the first display, else 'ICD-10-CM M54.50'."""
    if not isinstance(concept, dict):
        return ""
    codings = [c for c in concept.get("coding") or () if isinstance(c, dict)] \
        if isinstance(concept.get("coding"), list) else []
    coded = next((c for c in codings if isinstance(c.get("code"), str)), None)
    code_part = ""
    if coded:
        system = normalise_system(coded.get("system"))
        code_part = f"{SYSTEM_NAMES.get(system, 'local code')} {coded['code']}"
    text = concept.get("text") if isinstance(concept.get("text"), str) else None
    text = text or next((c["display"] for c in codings if isinstance(c.get("display"), str)), None)
    if text and code_part:
        return f"{text} ({code_part})"
    return text or code_part
