"""SNOMED CT hierarchies: descendants from the published expansions are recognised; unlisted codes are
read by a guarded display fallback; benign, in situ, uncertain, skin, screening, family-history and
fear-of concepts are not cancers.

Codes marked "unlisted" below are fictitious ids with valid check digits: they stand for a descendant
that no list names, so that only the display can decide.
"""

import pytest

from fhir_mappings.terminology import SNOMED, value_set

UNLISTED = "99900010003"  # fictitious, well-formed (Verhoeff, partition 00), in no value set


def snomed(code: str, display: str | None = None, text: str | None = None) -> dict:
    coding = {"system": SNOMED, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding], **({"text": text} if text else {})}


def found(name: str, concept: dict):
    return value_set(name).match(concept)


@pytest.mark.parametrize("code,concept", [
    ("254632001", "malignancy"),  # Small cell carcinoma of lung
    ("399490008", "malignancy"),  # Adenocarcinoma of prostate
    ("702391001", "malignancy"),  # Renal cell carcinoma
    ("404148006", "malignancy"),  # Diffuse large B-cell lymphoma (nodal/systemic with skin involvement)
    ("118599009", "malignancy"),  # Hodgkin's disease
    ("188718006", "myeloma"),  # Malignant plasma cell neoplasm, extramedullary plasmacytoma
    ("404142007", "myeloma"),  # Primary cutaneous plasmacytoma
    ("413587002", "myeloma"),  # Smoldering myeloma
    ("91271000119101", "metastatic-disease"),  # Metastatic squamous cell carcinoma to bone
    ("1251474009", "metastatic-disease"),  # Metastatic osteosarcoma to bone of vertebra
    ("94222008", "metastatic-disease"),  # Secondary malignant neoplasm of bone
    ("236648008", "urinary-retention"),  # Acute retention of urine
    ("12454008", "cauda-equina-syndrome"),  # Cauda equina syndrome with neurogenic bladder
    ("449813001", "saddle-anesthesia"),  # Numbness of saddle area
    ("300948004", "motor-deficit"),  # Quadriceps weakness
    ("266719004", "cancer-treatment"),  # Oral chemotherapy
])
def test_a_published_descendant_is_recognised_by_its_code_alone(code, concept):
    match = found(concept, snomed(code))
    assert match is not None and match.how == "code"


@pytest.mark.parametrize("code", [
    "254701007",  # Basal cell carcinoma of skin
    "402819001",  # Basal cell carcinoma of skin of lip
    "285309005",  # Squamous cell carcinoma of skin of cheek
])
def test_non_melanoma_skin_cancer_codes_veto_malignancy(code):
    assert found("malignancy", snomed(code, text="skin cancer")) is None
    assert found("non-melanoma-skin-cancer", snomed(code)) is not None


@pytest.mark.parametrize("code,display", [
    ("109995007", "Myelodysplastic syndrome (disorder)"),
    ("94782007", "Neoplasm of uncertain behavior of cauda equina (disorder)"),
    ("1148847004", "Follicular non-Hodgkin's lymphoma in situ (disorder)"),
    ("92047003", "Benign neoplasm of cauda equina (disorder)"),
    ("189336000", "Carcinoma in situ of breast (disorder)"),
    ("403593004", "Phobic fear of skin cancer (disorder)"),
    ("429011007", "Family history of malignant neoplasm of lung (situation)"),
    ("268547008", "Screening for malignant neoplasm of breast (procedure)"),
])
def test_traps_are_not_malignancies(code, display):
    assert found("malignancy", snomed(code, display)) is None


@pytest.mark.parametrize("display", [
    "Cholangiocarcinoma of perihilar bile duct (disorder)",
    "Osteosarcoma of vertebral column (disorder)",
    "Neuroblastoma of adrenal gland (disorder)",
    "Primary malignant glioma of brain (disorder)",
    "T-cell prolymphocytic leukemia (disorder)",
    "History of malignant neoplasm of rectum (situation)",
])
def test_an_unlisted_snomed_code_is_read_by_its_display(display):
    match = found("malignancy", snomed(UNLISTED, display))
    assert match is not None and match.how == "text"


def test_an_unlisted_snomed_code_is_read_by_the_concept_text_when_it_has_no_display():
    assert found("malignancy", snomed(UNLISTED, text="Merkel cell carcinoma of skin of cheek")) is not None


@pytest.mark.parametrize("display", [
    "Benign neoplasm of bone (disorder)",
    "Carcinoma in situ of prostate (disorder)",
    "Neoplasm of uncertain behaviour of bone (disorder)",
    "Borderline ovarian tumour of low malignant potential (disorder)",
    "Basal cell carcinoma of skin of back (disorder)",
    "Squamous cell carcinoma of skin of scalp (disorder)",
    "Fear of cancer (finding)",
    "Family history of malignant melanoma (situation)",
    "Screening for malignant neoplasm of colon (procedure)",
    "Malignant hypertension (disorder)",
    "Neuroleptic malignant syndrome (disorder)",
    "Malignant hyperthermia (disorder)",
    "Osteoblastoma of vertebra (disorder)",
    "No history of malignant neoplasm (situation)",
    "Suspected malignant neoplasm of lung (situation)",
])
def test_the_display_fallback_is_guarded(display):
    assert found("malignancy", snomed(UNLISTED, display)) is None


@pytest.mark.parametrize("concept,display", [
    ("metastatic-disease", "Metastatic malignant neoplasm to sacrum (disorder)"),
    ("myeloma", "Immunoglobulin M myeloma (disorder)"),
    ("cauda-equina-syndrome", "Incomplete cauda equina syndrome due to disc prolapse (disorder)"),
    ("urinary-retention", "Painless retention of urine (finding)"),
    ("fecal-incontinence", "Passive fecal incontinence (finding)"),
    ("cord-compression", "Compression of spinal cord due to metastasis (disorder)"),
    ("sensory-symptom", "Paresthesia of foot (finding)"),
    ("sensory-symptom", "Numbness of lower limb (finding)"),
    ("gait-disturbance", "Difficulty walking up stairs (finding)"),
])
def test_other_hierarchies_fall_back_on_their_own_words(concept, display):
    assert found(concept, snomed(UNLISTED, display)) is not None


@pytest.mark.parametrize("concept,display", [
    ("metastatic-disease", "Metastatic calcification of soft tissue (disorder)"),
    ("cauda-equina-syndrome", "Injury of cauda equina (disorder)"),
    ("urinary-retention", "Postoperative retention of urine (disorder)"),
    ("urinary-incontinence", "Stress incontinence of urine (finding)"),
    ("motor-deficit", "Weakness of upper limb as sequela of stroke (disorder)"),
    ("sensory-symptom", "Numbness of hand due to carpal tunnel syndrome (disorder)"),
    ("sensory-symptom", "No numbness (situation)"),
    ("gait-disturbance", "Antalgic gait (finding)"),
])
def test_other_hierarchies_have_their_own_vetoes(concept, display):
    assert found(concept, snomed(UNLISTED, display)) is None


def test_listed_codes_decide_without_reading_the_display():
    # A listed breast cancer with a misleading display is still a cancer; a listed BCC never is.
    assert found("malignancy", snomed("254837009", "Benign breast finding")) is not None
    assert found("malignancy", snomed("254701007", "Malignant neoplasm")) is None


def test_postoperative_retention_listed_by_vsac_is_excluded():
    assert found("urinary-retention", snomed("236652008", "Postoperative retention of urine (disorder)")) is None


def test_complex_regional_pain_syndrome_is_not_back_pain():
    assert found("low-back-pain", snomed("128200000", "Complex regional pain syndrome (disorder)")) is None


def test_lumbar_nerve_root_compression_is_back_pain():
    assert found("low-back-pain", snomed("299966003")) is not None


def test_the_stand_in_code_is_well_formed_and_unlisted():
    from fhir_mappings.code_formats import well_formed
    from fhir_mappings.terminology import all_value_sets

    assert well_formed(SNOMED, UNLISTED)
    assert not any(value_set(name).lists(SNOMED, UNLISTED) for name in all_value_sets())

