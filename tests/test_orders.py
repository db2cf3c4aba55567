"""fhir_mappings.orders recognises lumbar-spine imaging among draft orders; cards.rating rates it (PAMA)."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path

import pytest

from cards import rating
from cards.rating import duration_bucket, rate, rating_action
from fhir_mappings.orders import ImagingOrder, classify_text, lumbar_imaging_orders

SPEC = Path(__file__).parent / "fixtures" / "cds-hooks-spec"
ARGONAUT = SPEC / "argonaut-cds-hooks-for-pama" / "examples"
SANDBOX = SPEC / "cds-hooks-sandbox" / "captured"
KNOWLEDGE = Path(__file__).parent.parent / "cards" / "knowledge"
ORDERABLES = Path(__file__).parent.parent / "fhir_mappings" / "orderables.json"

CPT = "http://www.ama-assn.org/go/cpt"
LOINC = "http://loinc.org"
RADLEX = "http://www.radlex.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"

PAMA_RATING = "http://fhir.org/argonaut/Extension/pama-rating"
PAMA_QCDSM = "http://fhir.org/argonaut/Extension/pama-rating-qcdsm-consulted"
PAMA_CONSULT = "http://fhir.org/argonaut/Extension/pama-rating-consult-id"
CONSULT_ID = "55f3b7fc-9955-420e-a460-ff284b2956e6"


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def service_request(coding=None, text=None, rid="sr1", reason=None, **extra) -> dict:
    resource = {
        "resourceType": "ServiceRequest",
        "id": rid,
        "status": "draft",
        "intent": "plan",
        "subject": {"reference": "Patient/p1"},
    }
    code: dict = {}
    if coding is not None:
        code["coding"] = coding if isinstance(coding, list) else [coding]
    if text is not None:
        code["text"] = text
    resource["code"] = code
    if reason is not None:
        resource["reasonCode"] = reason
    resource.update(extra)
    return resource


def bundle(*resources) -> dict:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def one(resource: dict) -> ImagingOrder:
    found = lumbar_imaging_orders(bundle(resource))
    assert len(found) == 1, found
    return found[0]


# --- by code

IMAGING_ENTRIES = [e for e in load(ORDERABLES)["orderables"] if e["kind"] == "imaging"]
CODED = [
    pytest.param(c["system"], c["code"], e["id"], e["modality"], id=f"{e['id']}-{c['code']}")
    for e in IMAGING_ENTRIES
    for c in e["codes"]
]


@pytest.mark.parametrize(("system", "code", "orderable_id", "modality"), CODED)
def test_every_coded_orderable_is_recognised(system, code, orderable_id, modality):
    order = one(service_request({"system": system, "code": code}))
    assert order.orderable == orderable_id
    assert order.modality == modality
    assert order.matched_by == "code"
    assert order.reference == "ServiceRequest/sr1"


@pytest.mark.parametrize(
    ("system", "code", "modality"),
    [
        (CPT, "72100", "radiograph"),
        (CPT, "72110", "radiograph"),
        (CPT, "72131", "ct"),
        (CPT, "72132", "ct"),
        (CPT, "72133", "ct"),
        (CPT, "72148", "mri-without"),
        (CPT, "72149", "mri-with"),
        (CPT, "72158", "mri-without-with"),
        (LOINC, "24970-6", "radiograph"),
        (LOINC, "30620-9", "ct"),
        (LOINC, "24963-1", "ct"),
        (LOINC, "30679-5", "mri-without"),
        (LOINC, "30678-7", "mri-with"),
        (LOINC, "24967-2", "mri-without-with"),
        (LOINC, "24968-0", "mri-without"),
        (LOINC, "30854-4", "mri-without"),
        (LOINC, "30855-1", "mri-without-with"),
        (RADLEX, "RPID2550", "radiograph"),
        (RADLEX, "RPID31", "ct"),
        (RADLEX, "RPID541", "mri-without"),
        (RADLEX, "RPID501", "mri-with"),
        (RADLEX, "RPID500", "mri-without-with"),
        ("http://radlex.org", "RPID541", "mri-without"),
        ("http://radlex.org", "RPID500", "mri-without-with"),
        ("http://radlex.org/", "rpid33", "ct"),
        ("urn:oid:2.16.840.1.113883.6.12", "72148", "mri-without"),
        (f" {CPT} ", " 72158 ", "mri-without-with"),
    ],
)
def test_recognised_by_cpt_loinc_and_radlex(system, code, modality):
    assert one(service_request({"system": system, "code": code})).modality == modality


def test_code_wins_over_text():
    order = one(service_request({"system": CPT, "code": "72158"}, text="MRI lumbar spine without contrast"))
    assert order.modality == "mri-without-with"
    assert order.orderable == "mri-lumbar-without-with"


def test_whole_spine_mri_is_recognised_with_its_region():
    order = one(service_request({"system": LOINC, "code": "30855-1"}))
    assert (order.region, order.orderable) == ("whole-spine", "mri-whole-spine-without-with")


def test_unknown_code_falls_back_to_the_text():
    order = one(
        service_request({"system": CPT, "code": "99999"}, text="MRI lumbar spine with and without contrast")
    )
    assert order.orderable is None
    assert order.matched_by == "text"
    assert order.modality == "mri-without-with"


def test_coding_display_is_used_when_there_is_no_text():
    coding = {
        "system": SNOMED,
        "code": "123",
        "display": "Magnetic resonance imaging of lumbar spine without contrast (procedure)",
    }
    order = one(service_request(coding))
    assert (order.modality, order.contrast, order.matched_by) == ("mri-without", "without", "text")


# --- by text


@pytest.mark.parametrize(
    ("text", "modality", "contrast"),
    [
        ("MRI L-spine", "mri-without", "unspecified"),
        ("MRI lumbar spine w/o contrast", "mri-without", "without"),
        ("MRI lumbar spine with and without contrast", "mri-without-with", "without-with"),
        ("MRI lumbar spine without and with IV contrast", "mri-without-with", "without-with"),
        ("MRI L-spine w/wo", "mri-without-with", "without-with"),
        ("MRI LS spine wo/w", "mri-without-with", "without-with"),
        ("MRI lumbar spine w/o and w/ contrast", "mri-without-with", "without-with"),
        ("MRI lumbar spine pre- and post-contrast", "mri-without-with", "without-with"),
        ("MR lumbar spine w/ contrast", "mri-with", "with"),
        ("MRI lumbar spine with gadolinium", "mri-with", "with"),
        ("MRI lumbar spine non-contrast", "mri-without", "without"),
        ("lumbar spine MRI", "mri-without", "unspecified"),
        ("Lumbar MRI without contrast, compare with prior", "mri-without", "without"),
        ("MRI thoracolumbar spine", "mri-without", "unspecified"),
        ("L-spine x-ray", "radiograph", "none"),
        ("XR lumbosacral spine 2-3 views", "radiograph", "none"),
        ("X-ray lumbar spine with flexion and extension views", "radiograph", "none"),
        ("Lumbar spine radiographs AP/lat", "radiograph", "none"),
        ("CT L spine", "ct", "unspecified"),
        ("CT lumbar spine without contrast", "ct", "without"),
        ("Lumbar spine CT", "ct", "unspecified"),
        ("Computed tomography of lumbar spine", "ct", "unspecified"),
    ],
)
def test_text_only_orders_are_recognised(text, modality, contrast):
    order = one(service_request(text=text))
    assert (order.modality, order.contrast, order.region) == (modality, contrast, "lumbar")
    assert order.orderable is None
    assert order.matched_by == "text"
    assert order.matched == text


@pytest.mark.parametrize(
    "text",
    [
        "MRI whole spine without and with contrast",
        "MRI C-T-L spine",
        "MRI cervical, thoracic and lumbar spine",
    ],
)
def test_whole_spine_text(text):
    assert classify_text(text)[1] == "whole-spine"


@pytest.mark.parametrize(
    "text",
    [
        "MRI cervical spine",
        "MRI thoracic spine",
        "CT abdomen",
        "CT abdomen and pelvis for low back pain",
        "XR knee",
        "MRI brain without contrast",
        "CT myelogram lumbar",
        "Lumbar epidural steroid injection",
        "MRI spine",
        "Physiotherapy for lumbar pain",
        "",
        "   ",
    ],
)
def test_non_lumbar_or_non_imaging_text_is_ignored(text):
    assert lumbar_imaging_orders(bundle(service_request(text=text))) == []


@pytest.mark.parametrize(
    ("coding", "text"),
    [
        ({"system": CPT, "code": "72141"}, "MRI cervical spine without contrast"),
        ({"system": CPT, "code": "74176"}, "CT abdomen and pelvis without contrast"),
        ({"system": CPT, "code": "73560"}, "XR knee 1-2 views"),
        ({"system": LOINC, "code": "4537-7"}, "ESR"),
    ],
)
def test_non_lumbar_coded_orders_are_ignored(coding, text):
    assert lumbar_imaging_orders(bundle(service_request(coding, text=text))) == []


def test_only_service_requests_are_considered():
    medication = {"resourceType": "MedicationRequest", "id": "m1", "code": {"text": "MRI lumbar spine"}}
    lumbar = service_request({"system": CPT, "code": "72148"}, rid="sr2")
    knee = service_request(text="XR knee", rid="sr3")
    found = lumbar_imaging_orders(bundle(medication, lumbar, knee))
    assert [o.reference for o in found] == ["ServiceRequest/sr2"]


# --- sandbox and Argonaut


def test_sandbox_empty_draft_is_harmless():
    body = load(SANDBOX / "order-select-pama-empty-draft.json")["body"]
    assert body["context"]["draftOrders"]["entry"][0]["resource"]["code"] == {"coding": [{}]}
    assert lumbar_imaging_orders(body["context"]["draftOrders"]) == []


def test_sandbox_study_only_and_with_reason():
    study_only = lumbar_imaging_orders(
        load(SANDBOX / "order-select-pama-study-only.json")["body"]["context"]["draftOrders"]
    )
    with_reason = lumbar_imaging_orders(
        load(SANDBOX / "order-select-pama.json")["body"]["context"]["draftOrders"]
    )
    assert [(o.reference, o.modality) for o in study_only] == [
        ("ServiceRequest/example-request-id", "mri-without")
    ]
    assert [o.orderable for o in with_reason] == ["mri-lumbar-without"]


def test_argonaut_scenario_01_draft_is_a_lumbar_ct():
    request = load(ARGONAUT / "scenario-01-outbound-request.json")
    (order,) = lumbar_imaging_orders(request["context"]["draftOrders"])
    assert order.reference == "ServiceRequest/example-MRI-59879846"
    assert order.reference in request["context"]["selections"]
    assert (order.modality, order.orderable, order.contrast) == (
        "ct",
        "ct-lumbar-without-with",
        "without-with",
    )
    assert order.resource == request["context"]["draftOrders"]["entry"][0]["resource"]


# --- malformed input


@pytest.mark.parametrize(
    "draft_orders",
    [
        None,
        [],
        {},
        "ServiceRequest",
        42,
        {"resourceType": "Bundle"},
        {"resourceType": "Bundle", "entry": None},
        {"resourceType": "Bundle", "entry": "x"},
        {"resourceType": "Bundle", "entry": [None, 1, "x", [], {}, {"resource": None}, {"resource": []}]},
        bundle({"resourceType": "ServiceRequest"}),
        bundle({"resourceType": "ServiceRequest", "code": None}),
        bundle({"resourceType": "ServiceRequest", "code": "MRI lumbar spine"}),
        bundle({"resourceType": "ServiceRequest", "code": {"coding": "x", "text": 5}}),
        bundle(
            {
                "resourceType": "ServiceRequest",
                "code": {"coding": [None, 3, {"system": 5, "code": ["72148"]}]},
            }
        ),
        bundle({"resourceType": "ServiceRequest", "code": {"coding": [{"system": CPT, "code": None}]}}),
        bundle({"resourceType": "ServiceRequest", "code": {"coding": [{}], "text": None}, "reasonCode": []}),
    ],
)
def test_malformed_drafts_never_raise(draft_orders):
    assert lumbar_imaging_orders(draft_orders) == []


def test_malformed_parts_do_not_hide_a_good_order():
    good = service_request({"system": CPT, "code": "72148"}, rid="good", reason="not a list")
    draft = {
        "resourceType": "Bundle",
        "entry": [None, {"resource": {"resourceType": "ServiceRequest", "code": 7}}, {"resource": good}],
    }
    (order,) = lumbar_imaging_orders(draft)
    assert order.reference == "ServiceRequest/good"


def test_draft_without_id_is_recognised_with_an_empty_reference():
    resource = service_request({"system": CPT, "code": "72148"})
    del resource["id"]
    order = one(resource)
    assert order.reference == ""
    assert order.resource_id is None


def test_a_bare_list_of_resources_is_accepted():
    found = lumbar_imaging_orders([service_request({"system": CPT, "code": "72100"})])
    assert [o.modality for o in found] == ["radiograph"]


def test_recognition_copies_the_draft():
    resource = service_request({"system": CPT, "code": "72148"})
    order = one(resource)
    resource["code"]["text"] = "changed afterwards"
    assert "text" not in order.resource["code"]


# --- low back pain reason


def concept(system=None, code=None, text=None, display=None) -> dict:
    result: dict = {}
    if system or code or display:
        coding = {k: v for k, v in {"system": system, "code": code, "display": display}.items() if v}
        result["coding"] = [coding]
    if text:
        result["text"] = text
    return result


# --- rating

UA, MBA, UNA = "usually-appropriate", "may-be-appropriate", "usually-not-appropriate"
OK, NOT, NONE = "appropriate", "not-appropriate", "no-criteria-apply"
MODS = ("radiograph", "ct", "mri-without", "mri-without-with", "mri-with")

# tier, LBP weeks, ACR variant, then (ACR category, PAMA rating) for each of MODS
TABLE = [
    ("emergency", None, "4", [(UNA, NOT), (MBA, OK), (UA, OK), (UA, OK), (None, NONE)]),
    ("emergency", 1, "4", [(UNA, NOT), (MBA, OK), (UA, OK), (UA, OK), (None, NONE)]),
    ("imaging", 2, "7", [(MBA, OK), (MBA, OK), (UA, OK), (UA, OK), (None, NONE)]),
    ("imaging", 30, "7", [(MBA, OK), (MBA, OK), (UA, OK), (UA, OK), (None, NONE)]),
    ("consider", 3, "1", [(UNA, NOT), (UNA, NOT), (UNA, NOT), (UNA, NOT), (None, NONE)]),
    ("consider", None, "1 or 2", [(UNA, NOT), (UNA, NOT), (UNA, NOT), (UNA, NOT), (None, NONE)]),
    ("consider", 6, "3", [(MBA, OK), (MBA, NOT), (UA, OK), (MBA, OK), (None, NONE)]),
    ("consider", 12, "3", [(MBA, OK), (MBA, NOT), (UA, OK), (MBA, OK), (None, NONE)]),
    ("none", 2, "1", [(UNA, NOT), (UNA, NOT), (UNA, NOT), (UNA, NOT), (None, NONE)]),
    ("none", 8, "2", [(UNA, NOT), (UNA, NOT), (UNA, NOT), (UNA, NOT), (None, NONE)]),
    ("none", None, "1 or 2", [(UNA, NOT), (UNA, NOT), (UNA, NOT), (UNA, NOT), (None, NONE)]),
]
RATING_CASES = [
    pytest.param(tier, weeks, variant, modality, acr, pama, id=f"{tier}-{weeks}w-{modality}")
    for tier, weeks, variant, cells in TABLE
    for modality, (acr, pama) in zip(MODS, cells, strict=True)
]


@pytest.mark.parametrize(("tier", "weeks", "variant", "modality", "acr", "pama"), RATING_CASES)
def test_rating_table(tier, weeks, variant, modality, acr, pama):
    rating = rate(modality, tier, weeks)
    assert (rating.acr_category, rating.pama_code, rating.acr_variant) == (acr, pama, variant)
    assert (rating.modality, rating.tier) == (modality, tier)
    assert f"variant {variant}" in rating.explanation
    assert "ACR AC Low Back Pain 2021" in rating.source


def test_rate_takes_an_order():
    order = one(service_request({"system": CPT, "code": "72148"}))
    assert rate(order, "imaging", 2) == rate("mri-without", "imaging", 2)


def test_unspecified_mri_contrast_is_rated_as_without_and_said_so():
    order = one(service_request(text="MRI L-spine"))
    rating = rate(order, "consider", 8)
    assert (rating.modality, rating.acr_category, rating.pama_code) == ("mri-without", UA, OK)
    assert "does not state the contrast" in rating.explanation


def test_emergency_ct_explanation_names_the_mri_contraindication():
    assert "MRI is contraindicated" in rate("ct", "emergency", None).explanation


def test_unknown_tier_or_modality_raises():
    with pytest.raises(ValueError):
        rate("ct", "urgent", 2)
    with pytest.raises(ValueError):
        rate("pet", "imaging", 2)


@pytest.mark.parametrize(
    ("weeks", "bucket"),
    [
        (None, "unknown"),
        (float("nan"), "unknown"),
        (-1, "unknown"),
        ("x", "unknown"),
        (True, "unknown"),
        (0, "lt6w"),
        (5.99, "lt6w"),
        (6, "ge6w"),
        (52, "ge6w"),
    ],
)
def test_duration_bucket(weeks, bucket):
    assert duration_bucket(weeks) == bucket


# --- rating action


def argonaut_order() -> ImagingOrder:
    (order,) = lumbar_imaging_orders(
        load(ARGONAUT / "scenario-01-outbound-request.json")["context"]["draftOrders"]
    )
    return order


def test_rating_action_matches_the_argonaut_example():
    order = argonaut_order()
    expected = load(ARGONAUT / "scenario-01-rating-response.json")["extension"]["systemActions"][0]
    action = rating_action(order, rate(order, "imaging", 3), CONSULT_ID)

    assert set(action) == {"type", "description", "resource"}
    assert action["type"] == expected["type"] == "update"
    assert action["description"]
    resource = action["resource"]
    assert [e["url"] for e in resource["extension"]] == [e["url"] for e in expected["resource"]["extension"]]
    for ours, theirs in zip(resource["extension"], expected["resource"]["extension"], strict=True):
        assert set(ours) == set(theirs)  # same value[x] type for each extension
    rating_ext, qcdsm_ext, consult_ext = resource["extension"]
    assert (
        rating_ext["valueCodeableConcept"]["coding"][0]
        == expected["resource"]["extension"][0]["valueCodeableConcept"]["coding"][0]
    )
    assert rating_ext["valueCodeableConcept"]["coding"][1] == {
        "system": "https://lbp-redflags.example/fhir/CodeSystem/acr-appropriateness",
        "code": MBA,
        "display": "May be appropriate",
    }
    assert qcdsm_ext == {"url": PAMA_QCDSM, "valueString": "lbp-redflags"}
    assert consult_ext == expected["resource"]["extension"][2]  # same consult id -> same extension
    without_extension = {k: v for k, v in resource.items() if k != "extension"}
    assert without_extension == {k: v for k, v in expected["resource"].items() if k != "extension"}


def test_no_criteria_apply_has_no_acr_coding():
    order = one(service_request({"system": CPT, "code": "72149"}))
    action = rating_action(order, rate(order, "imaging", 2), CONSULT_ID)
    rating_ext = action["resource"]["extension"][0]
    assert rating_ext["valueCodeableConcept"]["coding"] == [
        {"system": "http://fhir.org/argonaut/CodeSystem/pama-rating", "code": NONE}
    ]


def test_rating_extensions_replace_earlier_ones_and_keep_others():
    other = {"url": "http://example.org/other", "valueString": "kept"}
    stale = [
        {"url": PAMA_RATING, "valueCodeableConcept": {"coding": [{"code": "appropriate"}]}},
        {"url": PAMA_CONSULT, "valueUri": "urn:uuid:00000000-0000-4000-8000-000000000000"},
    ]
    order = one(service_request({"system": CPT, "code": "72148"}, extension=[stale[0], other, stale[1]]))
    first = rating_action(order, rate(order, "none", 2), CONSULT_ID)
    again = rating_action(one(first["resource"]), rate(order, "none", 2), str(uuid.UUID(int=1)))
    for action in (first, again):
        urls = [e["url"] for e in action["resource"]["extension"]]
        assert urls == ["http://example.org/other", PAMA_RATING, PAMA_QCDSM, PAMA_CONSULT]
        assert action["resource"]["extension"][1]["valueCodeableConcept"]["coding"][0]["code"] == NOT
    assert again["resource"]["extension"][3]["valueUri"] == f"urn:uuid:{uuid.UUID(int=1)}"


def test_rating_action_does_not_mutate_its_input():
    order = argonaut_order()
    before = copy.deepcopy(order.resource)
    action = rating_action(order, rate(order, "emergency", None), CONSULT_ID)
    assert order.resource == before
    assert "extension" not in order.resource
    action["resource"]["status"] = "changed"
    assert order.resource == before


@pytest.mark.parametrize(
    "consult_id", [CONSULT_ID, f"urn:uuid:{CONSULT_ID}", CONSULT_ID.upper(), uuid.UUID(CONSULT_ID)]
)
def test_consult_id_forms(consult_id):
    order = argonaut_order()
    action = rating_action(order, rate(order, "imaging", 3), consult_id)
    assert action["resource"]["extension"][2]["valueUri"] == f"urn:uuid:{CONSULT_ID}"


@pytest.mark.parametrize("consult_id", ["", "not-a-uuid", "urn:uuid:"])
def test_bad_consult_id_raises(consult_id):
    order = argonaut_order()
    with pytest.raises(ValueError):
        rating_action(order, rate(order, "imaging", 3), consult_id)


# --- the data files


def test_orderables_data_is_consistent():
    data = load(ORDERABLES)
    ids = [e["id"] for e in data["orderables"]]
    assert len(ids) == len(set(ids))
    systems = set(data["systems"].values())
    seen: set[tuple[str, str]] = set()
    for entry in data["orderables"]:
        assert entry["source"] and entry["display"] and entry["kind"] in data["categories"]
        assert any(c.get("suggest") for c in entry["codes"]), entry["id"]
        for coding in entry["codes"]:
            assert coding["system"] in systems
            if coding["system"] == CPT:
                assert "display" not in coding, "CPT descriptors are copyrighted"
            key = (coding["system"], coding["code"])
            assert key not in seen, key
            seen.add(key)
        if entry["kind"] == "imaging":
            assert entry["modality"] in MODS
            assert entry["region"] in ("lumbar", "whole-spine")
    whole_spine = [e for e in data["orderables"] if e.get("region") == "whole-spine"]
    assert all(c["system"] != CPT for e in whole_spine for c in e["codes"])


def test_appropriateness_data_covers_every_tier_duration_and_modality():
    data = load(KNOWLEDGE / "appropriateness.json")
    assert data["codeSystems"]["pamaRating"] == "http://fhir.org/argonaut/CodeSystem/pama-rating"
    for tier in ("emergency", "imaging", "consider", "none"):
        for weeks in (None, 1, 10):
            rating_row = rating._row(tier, weeks)
            assert set(rating_row["ratings"]) == set(MODS)
            for cell in rating_row["ratings"].values():
                assert cell["pama"] in data["pamaRatings"]
                if cell["acr"] is not None and "projectDecision" not in cell:
                    assert data["acrCategories"][cell["acr"]]["pama"] == cell["pama"]
