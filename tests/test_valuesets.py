"""Structural checks on the clinical value set files in fhir_mappings/valuesets/."""

import json
import re
from pathlib import Path

import pytest

VALUESET_DIR = Path(__file__).resolve().parent.parent / "fhir_mappings" / "valuesets"
FILES = sorted(VALUESET_DIR.glob("*.json"))

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CPT = "http://www.ama-assn.org/go/cpt"
SYSTEMS = {ICD10CM, SNOMED, LOINC, RXNORM, CPT}

ICD_RE = re.compile(r"^[A-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?$")
LOINC_RE = re.compile(r"^\d{1,6}-\d$")
SNOMED_RE = re.compile(r"^\d{6,18}$")
RXNORM_RE = re.compile(r"^\d+$")
CPT_RE = re.compile(r"^\d{4}[0-9A-Z]$")
CODE_RE = {ICD10CM: ICD_RE, LOINC: LOINC_RE, SNOMED: SNOMED_RE, RXNORM: RXNORM_RE, CPT: CPT_RE}

# Codes known to be wrong for the concepts they are sometimes given for:
# 271594007 is Syncope (not saddle anaesthesia); 24531-6 is US retroperitoneum (not a lumbar MRI).
FORBIDDEN = ("271594007", "24531-6")

ALLOWED_KEYS = {"id", "title", "readFrom", "description", "source", "include", "exclude", "text", "notes"}
REQUIRED_KEYS = {"id", "title", "readFrom", "description", "source", "include", "text"}
# Where findings are read from: FHIR resource types, and "medication" for every medication resource.
READ_FROM = {"Condition", "Observation", "Procedure", "Encounter", "medication"}


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _parts(vs: dict):
    """(section, system, body) for every system entry in include and exclude."""
    for section in ("include", "exclude"):
        for system, body in (vs.get(section) or {}).items():
            yield section, system, body


def test_there_are_value_sets():
    assert len(FILES) >= 40


@pytest.fixture(params=FILES, ids=[p.stem for p in FILES])
def valueset(request):
    return request.param, _load(request.param)


def test_read_from_names_resources_and_their_elements(valueset):
    _, vs = valueset
    assert list(vs)[:3] == ["id", "title", "readFrom"]
    assert set(vs["readFrom"]) <= READ_FROM
    for elements in vs["readFrom"].values():
        assert elements and all(isinstance(e, str) and e for e in elements)


def test_files_keep_their_canonical_formatting(valueset):
    path, vs = valueset
    assert path.read_text(encoding="utf-8") == json.dumps(vs, indent=2, ensure_ascii=False) + "\n"


def test_keys_and_id(valueset):
    path, vs = valueset
    assert isinstance(vs, dict)
    assert REQUIRED_KEYS <= set(vs), f"missing keys: {REQUIRED_KEYS - set(vs)}"
    assert set(vs) <= ALLOWED_KEYS, f"unexpected keys: {set(vs) - ALLOWED_KEYS}"
    assert vs["id"] == path.stem
    assert isinstance(vs["title"], str) and vs["title"].strip()
    assert isinstance(vs["description"], str) and vs["description"].strip()
    assert "notes" not in vs or isinstance(vs["notes"], str)


def test_sources(valueset):
    _, vs = valueset
    assert isinstance(vs["source"], list) and vs["source"]
    assert all(isinstance(s, str) and s.strip() for s in vs["source"])


def test_has_content(valueset):
    _, vs = valueset
    n_codes = sum(
        len(body.get("codes") or {}) + len(body.get("prefixes") or []) + len(body.get("ranges") or [])
        for section, _, body in _parts(vs)
        if section == "include"
    )
    n_synonyms = len((vs.get("text") or {}).get("synonyms") or [])
    assert n_codes + n_synonyms > 0


def test_systems_and_code_shapes(valueset):
    _, vs = valueset
    for section in ("include", "exclude"):
        assert isinstance(vs.get(section, {}), dict)
    for section, system, body in _parts(vs):
        assert system in SYSTEMS, f"{section}: unknown system {system}"
        assert isinstance(body, dict)
        assert set(body) <= {"codes", "prefixes", "ranges"}
        if system != ICD10CM:
            assert not body.get("prefixes") and not body.get("ranges"), "prefixes/ranges are ICD-10-CM only"
        codes = body.get("codes") or {}
        assert isinstance(codes, dict)
        for code, display in codes.items():
            assert CODE_RE[system].match(code), f"{section}: {code!r} is not a valid {system} code"
            assert isinstance(display, str) and display.strip() == display and display
        for prefix in body.get("prefixes") or []:
            assert ICD_RE.match(prefix), f"{section}: bad ICD-10-CM prefix {prefix!r}"
        for rng in body.get("ranges") or []:
            assert isinstance(rng, list) and len(rng) == 2
            low, high = rng
            assert ICD_RE.match(low) and ICD_RE.match(high) and len(low) == len(high) == 3
            assert low <= high


def test_text(valueset):
    _, vs = valueset
    text = vs["text"]
    assert isinstance(text, dict) and set(text) <= {"synonyms", "exclude"}
    for key in ("synonyms", "exclude"):
        phrases = text.get(key) or []
        assert isinstance(phrases, list)
        for phrase in phrases:
            assert isinstance(phrase, str) and phrase
            assert phrase == phrase.strip(), f"{key}: {phrase!r} has leading/trailing spaces"
            assert "*" not in phrase[:-1], f"{key}: {phrase!r} has a wildcard that is not trailing"
        assert len({p.lower() for p in phrases}) == len(phrases), f"duplicate {key}"
    # A bare 'ca' would match calcium results ("Ca 2.4 mmol/L").
    assert "ca" not in {p.lower() for p in text.get("synonyms") or []}


def test_forbidden_codes_absent(valueset):
    path, _ = valueset
    raw = path.read_text(encoding="utf-8")
    for code in FORBIDDEN:
        assert code not in raw, f"{code} must not appear in {path.name}"


def test_readme_lists_every_value_set():
    readme = (VALUESET_DIR / "README.md").read_text(encoding="utf-8")
    for path in FILES:
        assert f"`{path.stem}`" in readme, f"{path.stem} missing from README table"
