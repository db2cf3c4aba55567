"""UCUM unit normalisation (ucumvert's UCUM parser on a pint registry).

g/L vs g/dL, mmol/L vs mg/dL (with a molar mass), [lb_av] vs kg, [degF] vs Cel (an offset unit),
ng/mL vs ug/L all compare correctly. Quantity.code is used when Quantity.system is UCUM; otherwise
the free-text Quantity.unit is read leniently ("g/dl", "lbs", "°F"). Unknown or incompatible units
give None, never an exception.
"""

from __future__ import annotations

import math
import re
from functools import cache, lru_cache

UCUM_SYSTEM = "http://unitsofmeasure.org"

# Free-text units seen in EHR data → UCUM. Keys are lower-cased with spaces removed.
LENIENT = {
    "g/dl": "g/dL", "gm/dl": "g/dL", "g/l": "g/L", "mg/dl": "mg/dL", "mmol/l": "mmol/L", "umol/l": "umol/L",
    "µmol/l": "umol/L", "lb": "[lb_av]", "lbs": "[lb_av]", "pound": "[lb_av]", "pounds": "[lb_av]",
    "kg": "kg", "kgs": "kg", "kilogram": "kg", "kilograms": "kg", "g": "g", "oz": "[oz_av]",
    "°f": "[degF]", "degf": "[degF]", "f": "[degF]", "fahrenheit": "[degF]", "°c": "Cel", "degc": "Cel",
    "c": "Cel", "cel": "Cel", "celsius": "Cel", "mm/hr": "mm/h", "mm/h": "mm/h", "mm/hour": "mm/h",
    "iu/l": "U/L", "[iu]/l": "U/L", "u/l": "U/L", "units/l": "U/L", "ng/ml": "ng/mL", "ug/l": "ug/L",
    "µg/l": "ug/L", "mcg/l": "ug/L", "%": "%", "percent": "%", "l/l": "L/L",
}
# UCUM codes pint reads differently from what clinical data means by them.
CANONICAL = {"[IU]/L": "U/L", "[iU]/L": "U/L"}


@cache
def registry():
    from ucumvert import PintUcumRegistry

    return PintUcumRegistry()


@lru_cache(maxsize=512)
def _unit(code: str):
    code = CANONICAL.get(code, code)
    try:
        return registry().from_ucum(code).units
    except Exception:  # ucumvert raises its own parse errors and pint's; any means "not a unit"
        return None


def _lenient(text: str) -> str | None:
    key = re.sub(r"\s+", "", text).lower()
    return LENIENT.get(key)


def convert(value: float, from_ucum: str, to_ucum: str, *, molar_mass: float | None = None) -> float | None:
    """value in from_ucum → to_ucum; molar_mass (g/mol) bridges amount and mass concentrations."""
    rule = _conversion(from_ucum, to_ucum, molar_mass)
    if rule is None:
        return None
    if rule is _PER_VALUE:
        result = _pint_convert(value, from_ucum, to_ucum, molar_mass)
        if result is None:
            return None
    else:
        scale, offset = rule
        result = value * scale + offset
    # Round away binary noise so a value on a threshold (100.4 [degF] = 38.0 Cel) stays on it.
    return round(result, 9) if math.isfinite(result) else None


_PER_VALUE = ("pint",)  # a conversion that is not affine (none in clinical use): asked of pint per value
_PROBES = (0.0, 1.0, 1000.0)


@lru_cache(maxsize=1024)
def _conversion(from_ucum: str, to_ucum: str, molar_mass: float | None):
    """(scale, offset) of a unit pair, learnt from pint once; None when the units do not convert.

    Every UCUM conversion between the units used here is affine (a factor, plus an offset for
    temperatures), so three probes establish it and later values need no pint arithmetic.
    """
    probes = [_pint_convert(x, from_ucum, to_ucum, molar_mass) for x in _PROBES]
    if all(p is None for p in probes):
        return None
    if any(p is None for p in probes):
        return _PER_VALUE
    offset, scale = probes[0], probes[1] - probes[0]
    expected = scale * _PROBES[2] + offset
    if not math.isclose(probes[2], expected, rel_tol=1e-12, abs_tol=1e-12):
        return _PER_VALUE
    return scale, offset


def _pint_convert(value: float, from_ucum: str, to_ucum: str, molar_mass: float | None) -> float | None:
    source, target = _unit(from_ucum), _unit(to_ucum)
    if source is None or target is None:
        return None
    ureg = registry()
    try:
        quantity = ureg.Quantity(value, source)
        try:
            result = quantity.to(target).magnitude
        except Exception:
            if molar_mass is None:
                return None
            mass = ureg.Quantity(molar_mass, "g/mol")
            try:
                result = (quantity * mass).to(target).magnitude
            except Exception:
                result = (quantity / mass).to(target).magnitude
    except Exception:  # pint's DimensionalityError, OffsetUnitCalculusError, ...
        return None
    return float(result)


def quantity_value(quantity: dict | None, target_ucum: str, *, molar_mass: float | None = None) -> float | None:
    """A FHIR Quantity → number in target_ucum, or None (no value, comparator '<'/'>', unknown unit)."""
    if not isinstance(quantity, dict):
        return None
    value = quantity.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    code = quantity.get("code") if quantity.get("system") == UCUM_SYSTEM else None
    unit_text = quantity.get("unit")
    candidates = []
    if isinstance(code, str) and code:
        candidates.append(code)
    if isinstance(unit_text, str) and unit_text:
        lenient = _lenient(unit_text)
        if lenient:
            candidates.append(lenient)
        candidates.append(unit_text)
    if isinstance(quantity.get("code"), str) and quantity.get("code") not in candidates:
        lenient = _lenient(quantity["code"])
        candidates.extend([c for c in (lenient, quantity["code"]) if c])
    for candidate in candidates:
        result = convert(float(value), candidate, target_ucum, molar_mass=molar_mass)
        if result is not None:
            return result
    return None
