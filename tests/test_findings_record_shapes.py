"""The findings reader on record shapes real EHRs send (issue 11): dates by age, medications by
statement and administration, panels and odd data. The clinical cases 111-149 run the same shapes
through the real service; these pin the edges a case cannot show."""

from datetime import date

from fhir_mappings.findings import extract
from fhir_mappings.record import PatientRecord

TODAY = date(2026, 11, 30)
PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1980-06-01", "gender": "female"}
CANCER = {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "C91.00"}]}


def facts_of(*resources):
    return extract(PatientRecord.from_resources([PATIENT, *resources], patient_id="p1"), TODAY)


def cancer(**dates):
    return {"resourceType": "Condition", "id": "c1", "code": CANCER, "subject": {"reference": "Patient/p1"},
            "clinicalStatus": {"coding": [{"code": "resolved"}]}, **dates}


def test_onset_age_in_months_dates_the_condition_from_the_birth_date():
    [finding] = facts_of(cancer(onsetAge={"value": 18, "code": "mo"})).having("malignancy")
    assert finding.onset == date(1981, 12, 1)


def test_abatement_string_with_an_age_is_read_as_that_birthday():
    [finding] = facts_of(cancer(abatementString="cured at age 8")).having("malignancy")
    assert finding.last_activity == date(1988, 6, 1)


def test_an_age_without_a_birth_date_leaves_the_condition_undated():
    record = PatientRecord.from_resources([{**PATIENT, "birthDate": None}, cancer(onsetAge={"value": 6, "code": "a"})],
                                          patient_id="p1")
    [finding] = extract(record, TODAY).having("malignancy")
    assert finding.onset is None and finding.last_activity is None


def steroid(rtype, status, **fields):
    return {"resourceType": rtype, "id": "m1", "status": status, "subject": {"reference": "Patient/p1"},
            "medicationCodeableConcept": {"text": "prednisone 40 mg"}, **fields}


def test_a_five_day_steroid_statement_is_not_immunosuppression():
    facts = facts_of(steroid("MedicationStatement", "completed",
                             effectivePeriod={"start": "2026-11-01", "end": "2026-11-06"}))
    assert facts.having("immunosuppression") == []


def test_a_steroid_administration_is_never_immunosuppression_on_its_own():
    facts = facts_of(steroid("MedicationAdministration", "completed", effectiveDateTime="2026-06-01"))
    assert facts.having("immunosuppression") == []


def test_an_intended_statement_is_not_a_drug_taken():
    facts = facts_of({**steroid("MedicationStatement", "intended"), "medicationCodeableConcept": {"text": "tamoxifen"}})
    assert facts.having("cancer-treatment") == []


def test_a_measured_value_wins_over_its_own_interpretation():
    hb = {"resourceType": "Observation", "id": "o1", "status": "final", "subject": {"reference": "Patient/p1"},
          "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]}, "effectiveDateTime": "2026-11-20",
          "valueQuantity": {"value": 11.8, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"},
          "interpretation": [{"coding": [{"code": "L"}]}]}
    facts = facts_of(hb)
    assert facts.labs["hemoglobin"].value == 11.8
    assert facts.having("anemia-diagnosis") == []


def test_malformed_components_are_skipped_and_named():
    panel = {"resourceType": "Observation", "id": "o1", "status": "final", "subject": {"reference": "Patient/p1"},
             "code": {"text": "CBC"}, "component": [None, "x", {"code": "718-7", "valueQuantity": {"value": "low"}}]}
    facts = facts_of(panel)
    assert facts.labs == {}


def test_an_observation_with_too_many_components_is_named_not_read():
    panel = {"resourceType": "Observation", "id": "o1", "status": "final", "subject": {"reference": "Patient/p1"},
             "code": {"text": "Questionnaire"}, "category": [{"coding": [{"code": "survey"}]}],
             "effectiveDateTime": "2026-11-29",
             "component": [{"code": {"text": "Faecal incontinence?"}, "valueBoolean": True}] * 201}
    facts = facts_of(panel)
    assert facts.having("fecal-incontinence") == []
    assert facts.unavailable == ["Observation/o1: 201 components (more than 200), not read"]


def test_a_medication_reference_with_only_a_display_is_read_by_its_display():
    request = {"resourceType": "MedicationRequest", "id": "r1", "status": "active", "intent": "order",
               "subject": {"reference": "Patient/p1"}, "authoredOn": "2026-10-01",
               "medicationReference": {"reference": "Medication/unknown", "display": "Anastrozole 1 mg tablet"}}
    facts = facts_of(request)
    assert [f.concept for f in facts.having("cancer-treatment")] == ["cancer-treatment"]
    assert facts.unavailable == []


def symptom(**dates):
    return {"resourceType": "Observation", "id": "o1", "status": "final", "subject": {"reference": "Patient/p1"},
            "code": {"text": "New urinary retention"}, **dates}


def test_an_observation_without_category_older_than_two_years_is_not_read():
    assert facts_of(symptom(effectiveDateTime="2024-11-01")).having("urinary-retention") == []
    assert facts_of(symptom(effectiveDateTime="2024-12-01")).having("urinary-retention") != []


def test_an_observation_without_effective_date_is_not_read_as_a_search_by_date_would_not_find_it():
    assert facts_of(symptom(issued="2026-11-29T10:00:00Z")).having("urinary-retention") == []


def test_an_exam_finding_has_no_window():
    exam = symptom(effectiveDateTime="2020-01-01", category=[{"coding": [{"code": "exam"}]}])
    assert facts_of(exam).having("urinary-retention") != []


def test_an_ongoing_effective_period_is_recent():
    assert facts_of(symptom(effectivePeriod={"start": "2020-01-01"})).having("urinary-retention") != []


def test_an_old_panel_without_results_is_neither_read_nor_reported():
    # Fetch mode never asks for it (date=ge), so prefetch must not report it either.
    panel = {"resourceType": "Observation", "id": "o1", "status": "final", "subject": {"reference": "Patient/p1"},
             "category": [{"coding": [{"code": "laboratory"}]}], "effectiveDateTime": "2020-01-01",
             "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2"}]}}
    assert facts_of(panel).unavailable == []
    assert facts_of({**panel, "effectiveDateTime": "2026-11-01"}).unavailable == [
        "Observation/o1: CBC panel - Blood by Automated count without results, not read"]
