"""UCUM normalisation: values in different units compare correctly."""

import pytest

from fhir_mappings.units import convert, quantity_value

UCUM = "http://unitsofmeasure.org"


def q(value, code, unit=None, system=UCUM):
    return {"value": value, "unit": unit or code, "system": system, "code": code}


def test_grams_per_litre_become_grams_per_decilitre():
    assert quantity_value(q(95, "g/L"), "g/dL") == pytest.approx(9.5)


def test_calcium_mmol_per_litre_becomes_mg_per_decilitre_with_its_molar_mass():
    assert quantity_value(q(2.62, "mmol/L"), "mg/dL", molar_mass=40.078) == pytest.approx(10.5, abs=0.01)


def test_molar_result_without_molar_mass_is_not_converted():
    assert quantity_value(q(2.62, "mmol/L"), "mg/dL") is None


def test_avoirdupois_pounds_become_kilograms():
    assert quantity_value(q(154, "[lb_av]"), "kg") == pytest.approx(69.85, abs=0.01)


def test_fahrenheit_becomes_celsius_exactly_on_the_fever_threshold():
    assert quantity_value(q(100.4, "[degF]"), "Cel") == 38.0


def test_100_2_fahrenheit_is_below_38_celsius():
    assert quantity_value(q(100.2, "[degF]"), "Cel") < 38.0


def test_micrograms_per_litre_equal_nanograms_per_millilitre():
    assert quantity_value(q(5, "ug/L"), "ng/mL") == pytest.approx(5)


def test_international_units_per_litre_compare_with_units_per_litre():
    assert quantity_value(q(150, "[IU]/L"), "U/L") == pytest.approx(150)


@pytest.mark.parametrize("value,unit,target,expected", [(9.5, "g/dl", "g/dL", 9.5), (9.5, "lbs", "kg", 4.309),
                                                        (100.4, "°F", "Cel", 38.0), (9.5, "mm/hr", "mm/h", 9.5)])
def test_free_text_units_are_read_leniently(value, unit, target, expected):
    assert quantity_value({"value": value, "unit": unit}, target) == pytest.approx(expected, abs=0.01)


def test_incompatible_units_give_none():
    assert quantity_value(q(5, "g/dL"), "kg") is None


@pytest.mark.parametrize("quantity", [None, {}, {"value": "high", "unit": "g/dL"}, {"value": True, "code": "g/dL"},
                                      {"value": 5, "unit": "furlongs per fortnight"}, "5 g/dL"])
def test_unusable_quantities_give_none_without_raising(quantity):
    assert quantity_value(quantity, "g/dL") is None


def test_convert_rejects_unknown_ucum_codes():
    assert convert(1.0, "not-a-unit", "g") is None


@pytest.mark.parametrize("source,target,molar_mass", [
    ("g/dL", "g/L", None), ("[degF]", "Cel", None), ("Cel", "[degF]", None), ("[lb_av]", "kg", None),
    ("mmol/L", "mg/dL", 40.078), ("mg/dL", "mmol/L", 40.078), ("ng/mL", "ug/L", None), ("mm/h", "mm/h", None)])
def test_a_unit_pair_learnt_once_converts_every_value_as_pint_does(source, target, molar_mass):
    from fhir_mappings.units import _pint_convert

    for value in (0.0, 1.0, 2.6, 12.0, 38.0, 100.4, 103.7, 250.0, -40.0):
        expected = round(_pint_convert(value, source, target, molar_mass), 9)
        assert convert(value, source, target, molar_mass=molar_mass) == expected
