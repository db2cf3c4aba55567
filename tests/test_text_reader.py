"""The text reader on sentences (issue 12, item 2): a red-flag mention counts only when it is about the patient,
affirmed, current and actual; uncertain mentions count for the emergency flags and for cancer only; cancer history
counts although it is historical. `find(text, value_set)` is the first mention that counts, `mentions(text)` every
mention with its modifiers, `quote(mention)` the sentence for the card.
"""

import re

import pytest

from fhir_mappings import text as text_reader
from fhir_mappings.text import find, mentions, quote


def matched(text: str, value_set: str) -> str | None:
    """The words of the first mention of `value_set` that counts, or None."""
    mention = find(text, value_set)
    return None if mention is None else text[mention.start:mention.end]


def visible(markdown: str) -> str:
    """What a reader sees of a quote: without the bold markers and the escaping backslashes."""
    return re.sub(r"\\(.)", r"\1", markdown).replace("**", "")


# ---------------------------------------------------------------------------- affirmed mentions and offsets


def test_an_affirmed_mention_counts_with_its_offsets_in_the_text():
    text = "Pt reports saddle numbness since this morning."
    mention = find(text, "saddle-anesthesia")
    assert mention is not None
    assert text[mention.start:mention.end].lower() == "saddle numbness"
    assert mention.value_set == "saddle-anesthesia"
    assert not (mention.negated or mention.family or mention.historical or mention.hypothetical)


def test_a_mention_carries_its_sentence_and_where_that_sentence_starts():
    text = "LBP for 2 weeks. New urinary retention since yesterday. Plan: MRI."
    mention = find(text, "urinary-retention")
    assert "urinary retention" in mention.sentence
    assert "Plan" not in mention.sentence and "2 weeks" not in mention.sentence
    assert text[mention.sentence_start:].startswith(mention.sentence)


def test_c_o_is_complains_of_not_a_negation():
    assert matched("Pt c/o saddle numbness since this morning.", "saddle-anesthesia")


def test_every_mention_is_listed_including_those_that_do_not_count():
    found = {(m.value_set, m.negated) for m in mentions("Denies fever. New saddle numbness.")}
    assert ("fever", True) in found
    assert ("saddle-anesthesia", False) in found


# ---------------------------------------------------------------------------- negation and its scope


@pytest.mark.parametrize("text", [
    "Denies saddle anaesthesia.",
    "No saddle anaesthesia.",
    "LBP without saddle anaesthesia.",
    "Saddle anaesthesia absent.",
    "Not reporting any saddle anaesthesia.",
])
def test_a_negated_mention_does_not_count(text):
    assert matched(text, "saddle-anesthesia") is None


def test_negative_for_negates_every_item_of_the_list():
    text = "Negative for fever, weight loss, night pain or urinary retention."
    for value_set in ("fever", "unintentional-weight-loss", "night-pain", "urinary-retention"):
        assert matched(text, value_set) is None, value_set


@pytest.mark.parametrize("text", [
    "ROS: negative for fever, weight loss or saddle anaesthesia.",
    "Neuro: no saddle anaesthesia.",
    "Review of systems: denies saddle anaesthesia.",
])
def test_a_negation_after_a_heading_on_the_same_line_still_negates(text):
    assert matched(text, "saddle-anesthesia") is None


@pytest.mark.parametrize("text", ["No history of cancer.", "No h/o cancer."])
def test_no_history_of_negates_the_history(text):
    assert matched(text, "cancer-personal-history") is None


def test_unlikely_before_the_concept_does_not_make_it_a_suspicion():
    assert matched("Unlikely to be cauda equina syndrome.", "cauda-equina-syndrome") is None


def test_no_evidence_of_negates_the_concept():
    assert matched("No evidence of metastatic disease.", "metastatic-disease") is None


def test_ruled_out_after_the_concept_negates_it():
    assert matched("Cauda equina syndrome ruled out.", "cauda-equina-syndrome") is None


def test_excluded_on_mri_after_the_concept_negates_it():
    assert matched("Cauda equina compression excluded on MRI.", "cauda-equina-syndrome") is None


def test_but_ends_the_scope_of_a_negation():
    text = "No fever but has night pain."
    assert matched(text, "fever") is None
    assert matched(text, "night-pain")


def test_a_negation_does_not_reach_a_later_finding_introduced_by_reports():
    text = "Denies fever, reports new difficulty passing urine since yesterday."
    assert matched(text, "fever") is None
    assert matched(text, "urinary-retention")


@pytest.mark.parametrize("text", [
    "Conus and cauda equina nerve roots are unremarkable.",
    "The conus terminates at L1 and the cauda equina is normal.",
    "Impression: L4/5 disc bulge. The cauda equina is not compressed.",
])
def test_a_structure_reported_as_normal_is_not_a_finding(text):
    assert matched(text, "cauda-equina-syndrome") is None


@pytest.mark.parametrize("text", ["Plan: discuss with MSCC coordinator today.", "Referred to the MSCC team."])
def test_a_service_named_after_an_emergency_is_not_the_emergency(text):
    assert matched(text, "cord-compression") is None


# ---------------------------------------------------------------------------- checklists


@pytest.mark.parametrize("text", ["Saddle anaesthesia: No", "[ ] saddle anaesthesia"])
def test_a_checklist_line_answered_no_does_not_count(text):
    assert matched(text, "saddle-anesthesia") is None


@pytest.mark.parametrize("text", ["Saddle anaesthesia: Yes", "[x] saddle anaesthesia", "[X] saddle anaesthesia"])
def test_a_checklist_line_answered_yes_counts(text):
    assert matched(text, "saddle-anesthesia")


def test_an_unticked_box_after_a_ticked_line_is_still_unticked():
    text = "[x] urinary retention\n[ ] saddle anaesthesia"
    assert matched(text, "urinary-retention")
    assert matched(text, "saddle-anesthesia") is None


def test_each_checklist_line_has_its_own_answer():
    text = "Red flag screen\nUrinary retention: No\nSaddle anaesthesia: Yes\n[ ] faecal incontinence"
    assert matched(text, "urinary-retention") is None
    assert matched(text, "saddle-anesthesia")
    assert matched(text, "fecal-incontinence") is None


# ---------------------------------------------------------------------------- synonyms that contain negation words


@pytest.mark.parametrize("text, value_set", [
    ("Unable to pass urine since last night.", "urinary-retention"),
    ("Loss of bladder control since yesterday.", "urinary-incontinence"),
    ("Since yesterday he cannot walk unaided.", "gait-disturbance"),
    ("No relief with rest or lying flat.", "rest-pain"),
])
def test_a_synonym_that_contains_a_negation_word_is_a_finding(text, value_set):
    assert matched(text, value_set)


def test_a_synonym_with_a_negation_word_inside_a_negated_list_still_counts():
    text = "Denies fever, chills; unable to pass urine since last night."
    assert matched(text, "urinary-retention")
    assert matched(text, "fever") is None


@pytest.mark.parametrize("text, value_set", [
    ("Reduced sensation in the saddle area since lunchtime.", "saddle-anesthesia"),
    ("He cannot pass urine.", "urinary-retention"),
    ("Unable to void since this morning.", "urinary-retention"),
    ("Has not passed urine since yesterday.", "urinary-retention"),
    ("Wife reports he is incontinent.", "urinary-incontinence"),
    ("Double incontinence since this morning.", "fecal-incontinence"),
    ("PR: anal tone reduced.", "fecal-incontinence"),
    ("Numbness around the back passage.", "saddle-anesthesia"),
    ("Altered perineal sensation on the left.", "saddle-anesthesia"),
])
def test_common_clinical_phrasings_are_in_the_vocabulary(text, value_set):
    assert matched(text, value_set)


# ---------------------------------------------------------------------------- someone else


def test_a_relatives_diagnosis_is_not_the_patients():
    mention = next(m for m in mentions("Mother had breast cancer.") if m.value_set == "malignancy")
    assert mention.family
    assert find("Mother had breast cancer.", "malignancy") is None


@pytest.mark.parametrize("text", ["Mum had breast ca.", "Dad died of prostate ca at 70."])
def test_a_parent_named_informally_is_someone_else(text):
    assert matched(text, "malignancy") is None


def test_his_wifes_diagnosis_is_not_the_patients():
    assert matched("His wife has metastatic breast cancer; he is her main carer.", "metastatic-disease") is None


def test_a_relative_reporting_about_the_patient_is_about_the_patient():
    mention = find("Wife reports he is incontinent of faeces.", "fecal-incontinence")
    assert mention is not None and not mention.family


def test_a_relative_who_has_noticed_something_about_the_patient_reports_about_the_patient():
    assert matched("His wife has noticed he is wetting himself.", "urinary-incontinence")


def test_the_family_history_section_is_about_relatives():
    text = "Family history:\nBreast cancer.\nMyeloma.\n"
    assert matched(text, "malignancy") is None
    assert matched(text, "myeloma") is None
    assert {m.section for m in mentions(text) if m.value_set == "myeloma"} == {"family_history"}


# ---------------------------------------------------------------------------- historical


@pytest.mark.parametrize("text", [
    "h/o urinary retention.",
    "History of urinary retention.",
    "Urinary retention after surgery in 2012.",
    "Previous urinary retention after a hernia repair.",
])
def test_a_historical_symptom_does_not_count(text):
    assert matched(text, "urinary-retention") is None


def test_a_symptom_in_the_past_medical_history_section_does_not_count():
    text = "Past medical history:\nUrinary retention, catheterised for 48 h.\nHypertension.\n"
    assert matched(text, "urinary-retention") is None
    assert {m.section for m in mentions(text) if m.value_set == "urinary-retention"} == {"past_medical_history"}


@pytest.mark.parametrize("text, value_set", [
    ("h/o breast ca 2019.", "malignancy"),
    ("Hx of cancer.", "cancer-personal-history"),
    ("s/p prostatectomy for prostate cancer 2019.", "malignancy"),
    ("Past medical history:\nMultiple myeloma, in remission since 2021.\n", "myeloma"),
])
def test_cancer_history_counts_although_it_is_historical(text, value_set):
    assert matched(text, value_set)


def test_a_section_heading_after_another_section_starts_a_new_section():
    text = "History of present illness:\nLBP for 2 weeks.\nFamily history:\nBreast cancer.\n"
    assert matched(text, "malignancy") is None
    assert {m.section for m in mentions(text) if m.value_set == "malignancy"} == {"family_history"}


def test_a_history_heading_is_the_presenting_history_not_the_past_history():
    assert matched("Hx: saddle numbness since this morning.", "saddle-anesthesia")


def test_a_symptom_in_the_history_of_present_illness_counts():
    text = "History of present illness:\nNew saddle numbness since this morning.\n"
    mention = find(text, "saddle-anesthesia")
    assert mention is not None and mention.section == "history_of_present_illness"


# ---------------------------------------------------------------------------- hypothetical and plans


@pytest.mark.parametrize("text, value_set", [
    ("Return if you develop incontinence or saddle numbness.", "saddle-anesthesia"),
    ("Advised to seek care should numbness occur.", "sensory-symptom"),
    ("If symptoms worsen or you develop a fever, attend ED.", "fever"),
])
def test_safety_netting_is_hypothetical_and_does_not_count(text, value_set):
    assert matched(text, value_set) is None


@pytest.mark.parametrize("text, value_set", [
    ("Plan: MRI to exclude mets.", "metastatic-disease"),
    ("Plan: myeloma screen sent.", "myeloma"),
])
def test_plan_wording_about_a_test_is_not_a_suspicion_of_the_disease(text, value_set):
    assert matched(text, value_set) is None


# ---------------------------------------------------------------------------- uncertain


@pytest.mark.parametrize("text, value_set", [
    ("? cauda equina syndrome.", "cauda-equina-syndrome"),
    ("Query cauda equina syndrome.", "cauda-equina-syndrome"),
    ("New urinary retention, r/o cauda equina.", "cauda-equina-syndrome"),
    ("Possible cauda equina syndrome.", "cauda-equina-syndrome"),
    ("Concern for cord compression.", "cord-compression"),
    ("Cannot exclude cord compression.", "cord-compression"),
])
def test_an_uncertain_emergency_diagnosis_counts(text, value_set):
    mention = find(text, value_set)
    assert mention is not None and mention.uncertain


@pytest.mark.parametrize("text, value_set", [
    ("Lytic lesion at L3, suspicious for metastasis.", "metastatic-disease"),
    ("Suspected malignancy.", "malignancy"),
])
def test_a_suspected_cancer_counts(text, value_set):
    assert matched(text, value_set)


@pytest.mark.parametrize("text, value_set", [
    ("Possible weight loss.", "unintentional-weight-loss"),
    ("? night pain.", "night-pain"),
    ("Query fever.", "fever"),
])
def test_an_uncertain_weak_flag_does_not_count(text, value_set):
    assert matched(text, value_set) is None


# ---------------------------------------------------------------------------- the quote


def test_the_quote_bolds_the_matched_words():
    text = "Pt c/o saddle numbness since this morning."
    assert "**saddle numbness**" in quote(find(text, "saddle-anesthesia"))


def test_the_quote_is_the_sentence_not_the_whole_note():
    text = "LBP for 6 days after lifting. Pt c/o saddle numbness since this morning. Plan: urgent MRI tonight."
    shown = visible(quote(find(text, "saddle-anesthesia")))
    assert "saddle numbness since this morning" in shown
    assert "lifting" not in shown and "Plan" not in shown


def test_a_long_sentence_is_cut_to_about_120_characters_around_the_match():
    text = ("Pt describes a long and detailed story of lifting heavy boxes at the warehouse over several weeks, "
            "twisting repeatedly, with pain radiating to both buttocks and thighs, and since this morning reports "
            "saddle numbness that has spread to the inner thighs, along with a feeling of incomplete emptying, "
            "which her husband has also noticed when she goes to the toilet during the night.")
    shown = quote(find(text, "saddle-anesthesia"))
    assert "**saddle numbness**" in shown
    assert len(visible(shown)) <= 125


def test_the_quote_limit_can_be_set():
    text = "Pt describes twisting at work over several weeks and since this morning reports saddle numbness spreading."
    shown = quote(find(text, "saddle-anesthesia"), limit=40)
    assert "**saddle numbness**" in shown
    assert len(visible(shown)) <= 45


def test_a_markdown_link_in_the_note_is_escaped_in_the_quote():
    text = "Pt c/o saddle numbness [click](http://evil.example/x) since this morning."
    shown = quote(find(text, "saddle-anesthesia"))
    assert "[click](" not in shown and "](http" not in shown
    assert "click" in visible(shown)


def test_asterisks_in_the_note_are_escaped_in_the_quote():
    text = "**URGENT** pt c/o saddle numbness since this morning."
    shown = quote(find(text, "saddle-anesthesia"))
    assert "**URGENT**" not in shown
    assert "**saddle numbness**" in shown
    assert "URGENT" in visible(shown)


def test_the_quote_is_one_line():
    text = "Red flag screen\nSaddle anaesthesia: Yes\nUrinary retention: No"
    assert "\n" not in quote(find(text, "saddle-anesthesia"))


# ---------------------------------------------------------------------------- the cache


def test_the_same_text_is_read_once(monkeypatch):
    text = "Pt c/o saddle numbness since this morning; denies fever (read-once check)."
    first = mentions(text)
    parsed = text_reader._read_block.cache_info().misses
    again = mentions("".join(list(text)))  # an equal text, not the same object
    assert text_reader._read_block.cache_info().misses == parsed
    assert again == first


def test_the_pipeline_is_rebuilt_once_the_tokenizer_remembers_too_many_words(monkeypatch):
    mentions("Denies saddle anaesthesia (warm-up).")
    before = text_reader._pipeline()
    monkeypatch.setattr(text_reader, "VOCABULARY_LIMIT", 0)
    mentions("New saddle numbness (vocabulary check).")
    assert text_reader._pipeline() is not before
