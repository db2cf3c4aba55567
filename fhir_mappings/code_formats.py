"""Is a code well-formed for its code system? Check digits and patterns, no terminology needed.

A malformed code in a value set can never match a real record, and a malformed code in a record
is not worth a terminology-server call. Rules:

- SNOMED CT identifiers: 6 to 18 digits, no leading zero, a valid Verhoeff check digit, and the
  partition identifier of a concept (``00`` short format, ``10`` long format with a namespace).
- LOINC: ``<digits>-<check digit>`` with the LOINC mod-10 check digit.
- ICD-10-CM: a letter, a digit, a digit or letter, then up to four more after an optional dot.
- RxNorm: an RXCUI, digits only.
- CPT: five digits, or four digits and F / T / U (Category II, III, PLA); HCPCS Level II: a
  letter A-V and four digits.
"""

from __future__ import annotations

import re

from .terminology import CPT, HCPCS, ICD10CM, LOINC, RXNORM, SNOMED

_VERHOEFF_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 4, 0, 6, 7, 8, 9, 5), (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7), (4, 0, 1, 2, 3, 9, 5, 6, 7, 8), (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2), (7, 6, 5, 9, 8, 2, 1, 0, 4, 3), (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0))
_VERHOEFF_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 5, 7, 6, 2, 8, 3, 0, 9, 4), (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7), (9, 4, 5, 3, 1, 2, 6, 8, 7, 0), (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5), (7, 0, 4, 6, 9, 1, 3, 2, 5, 8))

_SNOMED_RE = re.compile(r"^[1-9]\d{5,17}$")
_SNOMED_CONCEPT_PARTITIONS = ("00", "10")
_LOINC_RE = re.compile(r"^(\d{1,7})-(\d)$")
_ICD_RE = re.compile(r"^[A-Z]\d[0-9A-Z](\.?[0-9A-Z]{1,4})?$")
_RXNORM_RE = re.compile(r"^[1-9]\d{0,8}$")
_CPT_RE = re.compile(r"^\d{4}[0-9FTU]$")
_HCPCS_RE = re.compile(r"^[A-V]\d{4}$")


def verhoeff_valid(digits: str) -> bool:
    """True when the last digit is the Verhoeff check digit of the others."""
    check = 0
    for i, digit in enumerate(reversed(digits)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[i % 8][int(digit)]]
    return check == 0


def loinc_check_digit(base: str) -> int:
    """LOINC's mod-10 check digit: digits in odd positions from the right are doubled (Luhn)."""
    total = 0
    for i, digit in enumerate(reversed(base)):
        value = int(digit) * (2 if i % 2 == 0 else 1)
        total += value // 10 + value % 10
    return (10 - total % 10) % 10


def snomed_concept_id(code: str) -> bool:
    return bool(_SNOMED_RE.match(code)) and code[-3:-1] in _SNOMED_CONCEPT_PARTITIONS and verhoeff_valid(code)


def loinc_code(code: str) -> bool:
    found = _LOINC_RE.match(code)
    return bool(found) and loinc_check_digit(found.group(1)) == int(found.group(2))


def well_formed(system: str, code: str) -> bool:
    """Whether ``code`` is a well-formed code of ``system`` (unknown systems: False)."""
    if not isinstance(code, str):
        return False
    if system == SNOMED:
        return snomed_concept_id(code)
    if system == LOINC:
        return loinc_code(code)
    if system == ICD10CM:
        return bool(_ICD_RE.match(code))
    if system == RXNORM:
        return bool(_RXNORM_RE.match(code))
    if system == CPT:
        return bool(_CPT_RE.match(code))
    if system == HCPCS:
        return bool(_HCPCS_RE.match(code))
    return False
