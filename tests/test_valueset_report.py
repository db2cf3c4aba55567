"""`lbp-redflags valuesets --report`: per concept, codes per code system and where they came from."""

import subprocess
import sys

from cds_service.cli import main
from fhir_mappings.terminology import all_value_sets, value_set
from fhir_mappings.valueset_report import coverage

SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"


def test_the_report_names_every_value_set_through_the_installed_command():
    result = subprocess.run([sys.executable, "-m", "cds_service.cli", "valuesets", "--report"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in all_value_sets():
        assert f"\n{name} — " in "\n" + result.stdout


def test_the_report_counts_the_published_snomed_expansion_of_malignancy(capsys):
    assert main(["valuesets", "--report", "malignancy"]) == 0
    out = capsys.readouterr().out
    snomed = coverage("malignancy").include[SNOMED]
    assert f"include SNOMED CT: {len(snomed.codes)} codes" in out
    assert "published/malignancy-snomed.json (VSAC 2.16.840.1.113883.3.526.2.1079 Cancer" in out
    assert "363346000 Malignant neoplastic disease" in out


def test_report_counts_are_the_codes_the_matcher_uses():
    for name in all_value_sets():
        for system, entry in coverage(name).include.items():
            assert len(entry.codes) == len(value_set(name).codes_for(system)), (name, system)


def test_cancer_concepts_now_hold_hundreds_of_snomed_codes():
    assert len(coverage("malignancy").include[SNOMED].codes) > 5000
    assert len(coverage("metastatic-disease").include[SNOMED].codes) > 500
    assert len(coverage("myeloma").include[SNOMED].codes) >= 20
    assert len(coverage("malignancy").include[ICD10CM].codes) > 1000


def test_an_unknown_value_set_is_a_clear_error(capsys):
    assert main(["valuesets", "--report", "no-such-set"]) == 2
    assert "unknown value set(s): no-such-set" in capsys.readouterr().err


def test_without_report_the_ids_are_listed(capsys):
    assert main(["valuesets"]) == 0
    assert capsys.readouterr().out.split() == all_value_sets()
