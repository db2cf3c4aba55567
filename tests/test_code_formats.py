"""Well-formed codes: SNOMED CT Verhoeff check digit and partition, LOINC mod-10, code patterns."""

import pytest

from fhir_mappings.code_formats import CPT, HCPCS, ICD10CM, LOINC, RXNORM, SNOMED, loinc_check_digit, well_formed


@pytest.mark.parametrize("code", ["363346000", "94222008", "279039007", "428041000124106", "16846261000119106"])
def test_real_snomed_concept_ids_are_well_formed(code):
    assert well_formed(SNOMED, code)


@pytest.mark.parametrize("code,why", [
    ("363346001", "wrong Verhoeff check digit"),
    ("94222009", "wrong Verhoeff check digit"),
    ("12345", "too short"),
    ("0363346000", "leading zero"),
    ("36334600O", "not digits"),
    ("12345013", "valid check digit, but partition 01 is a description id, not a concept"),
])
def test_malformed_snomed_ids_are_refused(code, why):
    assert not well_formed(SNOMED, code), why


@pytest.mark.parametrize("base,check", [("2857", 1), ("718", 7), ("29463", 7), ("4537", 7), ("72166", 2)])
def test_loinc_check_digits(base, check):
    assert loinc_check_digit(base) == check
    assert well_formed(LOINC, f"{base}-{check}")
    assert not well_formed(LOINC, f"{base}-{(check + 1) % 10}")


@pytest.mark.parametrize("system,code,ok", [
    (ICD10CM, "C79.51", True), (ICD10CM, "C7951", True), (ICD10CM, "M54.5", True), (ICD10CM, "C4A.9", True),
    (ICD10CM, "79.51", False), (ICD10CM, "C79.51234", False),
    (RXNORM, "1991302", True), (RXNORM, "0123", False), (RXNORM, "12a", False),
    (CPT, "72148", True), (CPT, "0042T", True), (CPT, "3008F", True), (CPT, "7214", False), (CPT, "J9045", False),
    (HCPCS, "J9045", True), (HCPCS, "72148", False),
    ("http://example.org/unknown", "123", False),
])
def test_code_patterns(system, code, ok):
    assert well_formed(system, code) is ok
