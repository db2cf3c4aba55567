"""Code and text matching against the value sets: codes first, then negation-aware text."""

import json
from pathlib import Path

import pytest

from fhir_mappings.terminology import (
    SNOMED,
    VALUESET_DIR,
    ValueSet,
    all_value_sets,
    coding_label,
    server_answers,
    shared_vocabularies,
    value_set,
)

ICD = "http://hl7.org/fhir/sid/icd-10-cm"
SCT = "http://snomed.info/sct"


def cc(system=None, code=None, display=None, text=None):
    concept = {}
    if code:
        coding = {"system": system, "code": code}
        if display:
            coding["display"] = display
        concept["coding"] = [coding]
    if text:
        concept["text"] = text
    return concept


def matches(name, concept):
    return value_set(name).match(concept) is not None


def test_snomed_code_matches():
    assert value_set("low-back-pain").match(cc(SCT, "279039007")).how == "code"


@pytest.mark.parametrize("code", ["M54.50", "M5450", "m54.5", "M54.42"])
def test_icd_codes_match_with_or_without_dots_and_by_prefix(code):
    assert matches("low-back-pain", cc(ICD, code))


def test_icd_10_alias_system_is_accepted():
    assert matches("low-back-pain", cc("http://hl7.org/fhir/sid/icd-10", "M54.5"))


@pytest.mark.parametrize("code", ["M54.2", "M54.6", "M25.561"])
def test_neck_thoracic_and_knee_pain_are_not_low_back_pain(code):
    assert not matches("low-back-pain", cc(ICD, code))


@pytest.mark.parametrize("code", ["C61", "C50.912", "C34.90", "C43.9", "C90.00", "C81.90"])
def test_malignant_neoplasm_codes_match_by_chapter_range(code):
    assert matches("malignancy", cc(ICD, code))


def test_non_melanoma_skin_cancer_is_not_malignancy_even_by_its_display():
    assert not matches("malignancy", cc(ICD, "C44.91", "Basal cell carcinoma of skin, unspecified"))


def test_personal_history_of_skin_cancer_is_excluded():
    assert not matches("cancer-personal-history", cc(ICD, "Z85.828"))
    assert matches("cancer-personal-history", cc(ICD, "Z85.46"))


def test_family_history_code_is_not_personal_history():
    assert not matches("cancer-personal-history", cc(ICD, "Z80.3"))


@pytest.mark.parametrize("text", ["h/o breast ca", "Ca prostate, on ADT", "known lung ca"])
def test_clinical_abbreviations_match_as_whole_tokens(text):
    assert value_set("malignancy").match_text(text) or value_set("cancer-personal-history").match_text(text)


@pytest.mark.parametrize("text", ["calcium 2.4", "cancelled appointment", "cardiac arrest"])
def test_abbreviations_do_not_match_inside_other_words(text):
    assert not value_set("malignancy").match_text(text)
    assert not value_set("cancer-personal-history").match_text(text)


@pytest.mark.parametrize("text", ["denies night pain", "No saddle anaesthesia", "no fever, night sweats or night pain"])
def test_negated_mentions_do_not_match(text):
    assert not any(value_set(n).match_text(text) for n in ("night-pain", "saddle-anesthesia"))


def test_a_finding_ruled_out_after_the_mention_does_not_match():
    assert not value_set("cauda-equina-syndrome").match_text("cauda equina syndrome ruled out")


def test_rule_out_means_suspected_and_matches():
    assert value_set("cauda-equina-syndrome").match_text("r/o cauda equina syndrome")


def test_plain_mention_matches():
    assert value_set("night-pain").match_text("Back pain, wakes him at night").how == "text"


def test_family_history_text_is_not_a_personal_cancer():
    assert not value_set("malignancy").match_text("Family history of breast cancer (mother)")


def test_mets_abbreviation_is_metastatic_disease():
    assert matches("metastatic-disease", cc(text="mets to spine"))


def test_text_veto_phrase_blocks_a_match():
    assert not value_set("smoking-current").match_text("ex-smoker, quit 2010")
    assert value_set("smoking-current").match_text("current smoker, 20/day")


def test_local_codes_fall_back_to_text():
    concept = cc("http://hospital.example.org/codes", "ONC-17", "Carcinoma of lung")
    assert value_set("malignancy").match(concept).how == "text"


def test_malformed_concepts_do_not_raise():
    for concept in ({"coding": "x"}, {"coding": [None, 3, {"code": 5}]}, {"text": 12}, "text", None):
        assert value_set("malignancy").match(concept) is None


def test_coding_label_shows_text_and_code():
    label = coding_label(cc(ICD, "M54.50", "Low back pain, unspecified"))
    assert label == "Low back pain, unspecified (ICD-10-CM M54.50)"


def test_negation_ends_where_a_new_statement_begins():
    assert value_set("urinary-retention").match_text("Denies fever, reports new difficulty passing urine")


def test_a_relative_mentioned_earlier_does_not_negate_the_patients_own_symptom():
    assert value_set("saddle-anesthesia").match_text("Attends with her daughter, reports perianal numbness")


def test_a_veto_phrase_speaks_only_for_its_own_clause():
    text = "Suspected cauda equina syndrome, emergency MRI arranged. Safety netting advice given."
    assert value_set("cauda-equina-syndrome").match_text(text)
    assert not value_set("cauda-equina-syndrome").match_text("Red flags for cauda equina discussed")


def test_excluded_later_in_the_clause_negates():
    assert not value_set("malignancy").match_text("Breast lump - cancer excluded on biopsy")


def test_a_veto_in_the_concepts_own_text_blocks_its_code_displays_too():
    concept = {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "19303",
                           "display": "Mastectomy, simple, complete"}],
               "text": "Risk-reducing bilateral mastectomy (BRCA1)"}
    assert value_set("cancer-treatment").match(concept) is None


# --- one shared matcher, cached lookups: the same answers as each value set alone

CASES = Path(__file__).parent / "cases"


def _strings(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str) and " " in value.strip():
        yield value


def corpus() -> list[str]:
    """Every phrase of every value set, in plain, negated, familial and qualified sentences, and every
    free text of the clinical cases."""
    texts = set()
    for name in all_value_sets():
        data = json.loads((VALUESET_DIR / f"{name}.json").read_text(encoding="utf-8"))
        fallback = (data.get("snomed") or {}).get("fallback") or {}
        phrases = [*(data.get("text") or {}).get("synonyms", []), *(data.get("text") or {}).get("exclude", []),
                   *fallback.get("words", []), *fallback.get("exclude", [])]
        for phrase in phrases:
            words = phrase.strip("*")
            texts.update({words, f"Denies {words}.", f"Mother had {words}, reports {words} now",
                          f"{words.upper()} ruled out; new {words}", f"h/o {words}-{words} but no {words}"})
    for path in CASES.glob("*.json"):
        texts.update(_strings(json.loads(path.read_text(encoding="utf-8"))))
    return sorted(texts)


def test_the_shared_matcher_finds_exactly_what_each_vocabulary_finds_alone():
    vocabularies = shared_vocabularies()
    for text in corpus():
        hits = vocabularies.hits(text)
        for key, pattern in vocabularies.patterns.items():
            alone = [(m.start(), m.end()) for m in pattern.finditer(text.lower())]
            assert hits.of(key) == alone, (key, text)


def test_shared_and_standalone_value_sets_answer_alike():
    texts = corpus()
    for name in all_value_sets():
        shared = value_set(name)
        alone = ValueSet(json.loads((VALUESET_DIR / f"{name}.json").read_text(encoding="utf-8")))
        for text in texts:
            assert shared.match_text(text) == alone.match_text(text), (name, text)
            concept = {"coding": [{"system": SNOMED, "code": "404684003", "display": text}], "text": text}
            assert shared.match(concept) == alone.match(concept), (name, text)


def test_phrases_of_different_value_sets_overlapping_in_one_text_are_each_found():
    text = "Past history of cancer (breast), mastectomy 2015"
    assert value_set("cancer-personal-history").match_text(text).display == "Past history of cancer"
    assert value_set("malignancy").match_text(text).display == "cancer"
    assert value_set("cancer-treatment").match_text(text).display == "mastectomy"


def test_a_repeated_text_is_read_from_the_cache_not_matched_again():
    text = "Progressive leg weakness and numbness since Tuesday"
    first = shared_vocabularies().hits(text)
    assert shared_vocabularies().hits(text) is first
    assert value_set("motor-deficit").mention_in(text) is value_set("motor-deficit").mention_in(text)


def test_the_text_cache_is_bounded():
    vocabularies = shared_vocabularies()
    for _ in range(3):
        vocabularies.hits("x" * 10_000 + str(_))
    assert vocabularies._long.cache_info().maxsize and vocabularies._short.cache_info().maxsize


def test_a_concept_with_a_list_where_a_string_belongs_is_matched_without_the_cache():
    concept = {"coding": [{"system": ICD, "code": ["C61"], "display": "Malignant neoplasm of prostate"}]}
    assert value_set("malignancy").match(concept) is not None  # by its display; the list is no code


def test_server_verdicts_are_not_cached_across_requests():
    concept = {"coding": [{"system": SNOMED, "code": "1234567001", "display": "Odd concept"}]}
    assert value_set("malignancy").match(concept) is None
    with server_answers({("malignancy", "1234567001"): True}):
        assert value_set("malignancy").match(concept).how == "code"
    assert value_set("malignancy").match(concept) is None
