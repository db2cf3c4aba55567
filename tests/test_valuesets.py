"""Structural checks on the clinical value set files in fhir_mappings/valuesets/."""

import json
import re
from pathlib import Path

import pytest

from fhir_mappings.code_formats import well_formed

VALUESET_DIR = Path(__file__).resolve().parent.parent / "fhir_mappings" / "valuesets"
FILES = sorted(VALUESET_DIR.glob("*.json"))
PUBLISHED = sorted((VALUESET_DIR / "published").glob("*.json"))

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CPT = "http://www.ama-assn.org/go/cpt"
HCPCS = "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
SYSTEMS = {ICD10CM, SNOMED, LOINC, RXNORM, CPT, HCPCS}

ICD_RE = re.compile(r"^[A-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?$")

# Codes known to be wrong for the concepts they are sometimes given for:
# 271594007 is Syncope (not saddle anaesthesia); 24531-6 is US retroperitoneum (not a lumbar MRI);
# 128200000 is Complex regional pain syndrome (not lumbar radiculopathy).
FORBIDDEN = ("271594007", "24531-6", "128200000")

# "readFrom" is read by the record reader; "published" and "snomed" by the matcher.
ALLOWED_KEYS = {"id", "title", "readFrom", "description", "source", "include", "exclude", "text", "notes",
                "published", "snomed"}
REQUIRED_KEYS = {"id", "title", "readFrom", "description", "source", "include", "text"}
# Where findings are read from: FHIR resource types, and "medication" for every medication resource.
READ_FROM = {"Condition", "Observation", "Procedure", "Encounter", "medication",
             "DocumentReference", "DiagnosticReport"}


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
            assert well_formed(system, code), f"{section}: {code!r} is not a well-formed {system} code"
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
    """Never listed as a code (notes may name them, to warn the next reviewer)."""
    _, vs = valueset
    listed = {code for _, _, body in _parts(vs) for code in body.get("codes") or {}}
    for names in (vs.get("published") or {}).values():
        for name in names:
            listed |= set(_load(VALUESET_DIR / "published" / f"{name}.json")["codes"])
    listed |= set((vs.get("snomed") or {}).get("roots") or {})
    assert not listed & set(FORBIDDEN)


def test_readme_lists_every_value_set():
    readme = (VALUESET_DIR / "README.md").read_text(encoding="utf-8")
    for path in FILES:
        assert f"`{path.stem}`" in readme, f"{path.stem} missing from README table"


def test_published_expansions_named_by_a_value_set_exist(valueset):
    _, vs = valueset
    published = vs.get("published") or {}
    assert set(published) <= {"include", "exclude"}
    for names in published.values():
        assert names and len(set(names)) == len(names)
        for name in names:
            assert (VALUESET_DIR / "published" / f"{name}.json").is_file(), f"no published expansion {name}"


def test_snomed_roots_and_fallback_are_well_formed(valueset):
    _, vs = valueset
    snomed = vs.get("snomed") or {}
    assert set(snomed) <= {"roots", "excludeRoots", "fallback"}
    for key in ("roots", "excludeRoots"):
        for code, display in (snomed.get(key) or {}).items():
            assert well_formed(SNOMED, code), f"{key}: {code!r} is not a SNOMED CT concept id"
            assert display.endswith(")"), f"{key}: {code} display should carry its semantic tag, as published"
    fallback = snomed.get("fallback")
    if fallback is not None:
        assert set(fallback) == {"words", "exclude"} and fallback["words"]
        for phrase in fallback["words"] + fallback["exclude"]:
            assert phrase == phrase.strip() and "*" not in phrase.strip("*")


def test_every_published_expansion_is_used():
    used = {name for path in FILES for names in (_load(path).get("published") or {}).values() for name in names}
    assert {p.stem for p in PUBLISHED} == used


@pytest.fixture(params=PUBLISHED, ids=[p.stem for p in PUBLISHED])
def expansion(request):
    return request.param, _load(request.param)


def test_published_expansion_records_source_version_and_licence(expansion):
    path, data = expansion
    assert data["id"] == path.stem
    assert data["system"] in SYSTEMS
    assert data["source"], "each expansion names the published value set(s) it comes from"
    for source in data["source"]:
        for key in ("valueSet", "oid", "version", "publisher", "repository", "path", "commit"):
            assert source.get(key), f"source lacks {key}"
        assert re.fullmatch(r"[0-9a-f]{40}", source["commit"])
    assert data["licence"] and all(isinstance(line, str) and line for line in data["licence"])
    assert data["derivation"].strip()
    assert data["codes"], "an expansion holds codes"


def test_every_code_in_a_published_expansion_is_well_formed(expansion):
    _, data = expansion
    bad = [code for code in [*data["codes"], *data["removed"]] if not well_formed(data["system"], code)]
    assert not bad, f"malformed {data['system']} codes: {bad[:10]}"
    assert not set(data["codes"]) & set(data["removed"])


def test_published_expansions_are_formatted_for_review(expansion):
    path, data = expansion
    assert path.read_text(encoding="utf-8") == json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    assert list(data["codes"]) == sorted(data["codes"])


def test_value_set_files_keep_their_formatting(valueset):
    """Formatted as json.dumps(indent=2, ensure_ascii=False) + newline, so parallel edits merge."""
    path, vs = valueset
    assert path.read_text(encoding="utf-8") == json.dumps(vs, indent=2, ensure_ascii=False) + "\n"


def _codes_in_use() -> set[tuple[str, str]]:
    """(system, code) of every SNOMED CT, LOINC, RxNorm and CPT code the value-set and knowledge files use."""
    root = VALUESET_DIR.parent.parent
    found: set[tuple[str, str]] = set()
    for path in FILES:
        vs = _load(path)
        found |= {(system, code) for _, system, body in _parts(vs) for code in body.get("codes") or {}}
        for key in ("roots", "excludeRoots"):
            found |= {(SNOMED, code) for code in (vs.get("snomed") or {}).get(key) or {}}

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("system"), str) and isinstance(node.get("code"), str):
                found.add((node["system"], node["code"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in [root / "fhir_mappings" / "analytes.json", *sorted((root / "cards" / "knowledge").glob("*.json"))]:
        walk(_load(path))
    return {(system, code) for system, code in found if system in {SNOMED, LOINC, RXNORM, CPT}}


def test_every_snomed_loinc_rxnorm_and_cpt_code_in_use_has_a_verification_record():
    record = _load(VALUESET_DIR / "verification" / "codes.json")
    entries = {(e["system"], e["code"]): e for e in record["codes"]}
    missing = sorted(_codes_in_use() - set(entries))
    assert not missing, f"record these codes in valuesets/verification/codes.json: {missing}"
    for entry in entries.values():
        assert entry["status"] in {"verified", "secondary", "not-verified"}
        if entry["status"] == "verified":
            source = entry["verifiedAgainst"]
            assert source["publishedDisplay"] and source["valueSet"] and re.fullmatch(r"[0-9a-f]{40}", source["commit"])
        else:
            assert entry["note"]


def test_corrected_codes_are_recorded_and_gone():
    record = _load(VALUESET_DIR / "verification" / "codes.json")
    corrected = {(c["system"], c["code"]) for c in record["corrections"]}
    assert (SNOMED, "128200000") in corrected
    assert not corrected & _codes_in_use()
