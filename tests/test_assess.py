"""The clinical core without HTTP: findings → red flags → tier, as pure functions."""

from datetime import date, timedelta

from cards.assess import assess, estimate_probability
from fhir_mappings.findings import extract, parse_date
from fhir_mappings.record import PatientRecord

TODAY = date(2026, 11, 24)
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
CS = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VS = "http://terminology.hl7.org/CodeSystem/condition-ver-status"


def days_ago(n):
    return (TODAY - timedelta(days=n)).isoformat()


def condition(cid, code, display, onset_days, clinical="active", verification="confirmed", **extra):
    return {"resourceType": "Condition", "id": cid, "code": {"coding": [{"system": ICD, "code": code,
                                                                          "display": display}]},
            "clinicalStatus": {"coding": [{"system": CS, "code": clinical}]},
            "verificationStatus": {"coding": [{"system": VS, "code": verification}]},
            "onsetDateTime": days_ago(onset_days), **extra}


def patient(age_years=40, gender="female"):
    return {"resourceType": "Patient", "id": "p", "gender": gender,
            "birthDate": date(TODAY.year - age_years, 1, 1).isoformat()}


LBP = condition("lbp", "M54.50", "Low back pain, unspecified", 14)


def run(*resources, age=40, gender="female"):
    record = PatientRecord.from_resources([patient(age, gender), *resources])
    return assess(extract(record, TODAY))


def test_no_low_back_pain_is_not_applicable():
    assert not run(condition("neck", "M54.2", "Cervicalgia", 10)).applicable


def test_low_back_pain_without_flags_is_tier_none():
    result = run(LBP)
    assert result.applicable and result.tier == "none" and result.red_flags == []


def test_resolved_low_back_pain_is_not_current():
    assert not run(condition("lbp", "M54.50", "Low back pain", 100, clinical="resolved")).applicable


def test_suspected_cauda_equina_is_an_emergency():
    result = run(LBP, condition("ces", "G83.4", "Cauda equina syndrome", 1, verification="provisional"))
    assert result.tier == "emergency" and result.flag_ids == ["neuro-deficit"]


def test_refuted_cauda_equina_is_ignored():
    assert run(LBP, condition("ces", "G83.4", "Cauda equina syndrome", 1, verification="refuted")).tier == "none"


def test_cancer_cured_25_years_ago_is_a_weak_flag_only():
    old = condition("ca", "C50.912", "Breast cancer", 30 * 365, clinical="resolved",
                    abatementDateTime=days_ago(25 * 365))
    result = run(LBP, old)
    assert result.tier == "consider" and "cancer-history" in result.flag_ids


def test_active_cancer_is_the_imaging_tier():
    result = run(LBP, condition("ca", "C61", "Malignant neoplasm of prostate", 400))
    assert result.tier == "imaging" and result.known_cancer


def test_age_50_plus_and_failure_to_improve_together_reach_imaging():
    lbp = condition("lbp", "M54.50", "Low back pain", 40)
    physio = {"resourceType": "Procedure", "id": "pt", "status": "completed",
              "code": {"text": "Physiotherapy"}, "performedDateTime": days_ago(20)}
    result = run(lbp, physio, age=55)
    assert set(result.flag_ids) == {"age-50-plus", "failure-to-improve"} and result.tier == "imaging"


def test_probability_estimate_rises_with_its_flags():
    base, _ = estimate_probability({})
    result = run(LBP, condition("wl", "R63.4", "Abnormal weight loss", 20), age=60)
    assert result.tier == "imaging" and base < 0.01 < result.probability


def test_no_probability_estimate_with_a_known_cancer():
    result = run(LBP, condition("ca", "C61", "Malignant neoplasm of prostate", 400), gender="male")
    assert result.tier == "imaging" and result.probability is None


def test_partial_dates_parse_to_the_start_or_end_of_the_period():
    assert parse_date("2019") == date(2019, 1, 1)
    assert parse_date("2019-02", end=True) == date(2019, 2, 28)
    assert parse_date("garbage") is None


def test_missing_data_is_carried_into_the_assessment():
    record = PatientRecord.from_resources([patient(), LBP], unavailable=["labs: HTTP 401"])
    assert assess(extract(record, TODAY)).unavailable == ["labs: HTTP 401"]


def test_cancer_age_comes_from_treatment_dates_before_the_recorded_date():
    history = {"resourceType": "Condition", "id": "hx", "recordedDate": days_ago(200),
               "code": {"coding": [{"system": ICD, "code": "Z85.3", "display": "Personal history of breast cancer"}]}}
    chemo = {"resourceType": "Procedure", "id": "chemo", "status": "completed", "code": {"text": "Chemotherapy"},
             "performedDateTime": days_ago(25 * 365)}
    result = run(LBP, history, chemo)
    assert result.tier == "consider" and "cancer-history" in result.flag_ids


def test_recorded_date_dates_a_cancer_history_with_nothing_else():
    history = {"resourceType": "Condition", "id": "hx", "recordedDate": days_ago(200),
               "code": {"coding": [{"system": ICD, "code": "Z85.3", "display": "Personal history of breast cancer"}]}}
    assert run(LBP, history).tier == "imaging"


def hb(oid, value, days, status="final"):
    return {"resourceType": "Observation", "id": oid, "status": status,
            "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
            "effectiveDateTime": days_ago(days),
            "valueQuantity": {"value": value, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"}}


def test_a_preliminary_result_newer_than_every_final_one_is_used_and_labelled():
    result = run(LBP, hb("old", 14, 700), hb("new", 8, 1, status="preliminary"))
    anemia = result.flag("anemia")
    assert anemia and anemia.strong and anemia.evidence[0].status == "preliminary"


def test_a_preliminary_result_is_superseded_by_a_final_one_of_the_same_draw():
    assert run(LBP, hb("p", 8, 1, status="preliminary"), hb("f", 13.5, 1)).flag("anemia") is None


def prednisone(days_running, **extra):
    return {"resourceType": "MedicationRequest", "id": "pred", "status": "active", "intent": "order",
            "medicationCodeableConcept": {"text": "prednisone 20 mg tablet"}, "authoredOn": days_ago(days_running),
            **extra}


def test_a_short_steroid_course_is_not_immunosuppression():
    assert "immunosuppression" not in run(LBP, prednisone(3)).flag_ids


def test_long_term_steroids_are_immunosuppression():
    assert "immunosuppression" in run(LBP, prednisone(60)).flag_ids
    assert "immunosuppression" in run(LBP, prednisone(2, courseOfTherapyType={"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/medicationrequest-course-of-therapy",
         "code": "continuous"}]})).flag_ids


def test_a_cancer_drug_given_for_a_non_cancer_reason_is_not_a_cancer_history():
    letrozole = {"resourceType": "MedicationRequest", "id": "let", "status": "active", "intent": "order",
                 "medicationCodeableConcept": {"text": "letrozole 2.5 mg"}, "authoredOn": days_ago(20),
                 "reasonCode": [{"text": "Female infertility, ovulation induction"}]}
    assert "cancer-history" not in run(LBP, letrozole).flag_ids
    del letrozole["reasonCode"]
    assert "cancer-history" in run(LBP, letrozole).flag_ids
