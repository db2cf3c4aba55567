"""Privacy (issue 8, item 6; issue 12, item 5): a full run of the real service with authentication on
leaves no token, patient identifier or patient name in its log, and reading clinical notes leaves no
fragment of their text in it.

The run goes through real sockets: an EHR-like client signing every call (tests/auth_tokens.py),
the service under gunicorn, and the FHIR test server behind the fault proxy. It covers discovery,
every hook (with prefetch and with the service fetching for itself), feedback, authentication
failures, invalid requests and FHIR errors (401, 500, an OperationOutcome that echoes the patient's
name). Then the whole log is searched for every secret the run handled.
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
import requests
from auth_tokens import Issuer, alg_none, jwks, make_key, write_config
from conftest import RunningService, today
from ehr_client import EhrClient

from cds_service.example_patients import load_file

pytest_plugins = ["fhir_fixtures"]

PUBLIC = "https://cds.example.test"
EHR = "https://ehr.example.test"
RUN = uuid.uuid4().hex[:8]
PATIENT_ID = f"privacy{RUN}"
GIVEN, FAMILY = f"Zebulon{RUN}", f"Quackenbush{RUN}"
MRN = f"MRN{RUN}77"
FHIR_TOKEN = f"fhir-access-token-{RUN}-secret"
EXAMPLE = "02-prostate-cancer-new-numbness.json"


def private_patient() -> dict:
    """Example 02 (prostate cancer, new numbness) under a unique id, name and MRN."""
    from cds_service.cli import EXAMPLES_DIR

    text = json.dumps(load_file(EXAMPLES_DIR / EXAMPLE, today())).replace("demo-mscc", PATIENT_ID)
    bundle = json.loads(text)
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    patient["name"] = [{"family": FAMILY, "given": [GIVEN]}]
    patient["identifier"] = [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": MRN}]
    return bundle


def draft_mri() -> dict:
    return {"resourceType": "ServiceRequest", "id": f"{PATIENT_ID}-sr", "status": "draft", "intent": "order",
            "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "72148"}],
                     "text": "MRI lumbar spine without contrast"},
            "subject": {"reference": f"Patient/{PATIENT_ID}"}}


@pytest.fixture(scope="module")
def run_log(tmp_path_factory, start_service, fhir_server):
    """Run everything once; return (service log, every secret the run handled)."""
    from fault_proxy import FaultProxy

    fhir_server.load_transaction(private_patient())
    proxy = FaultProxy(fhir_server.base_url).start()
    key = make_key("RS384", kid="privacy-key")
    folder = tmp_path_factory.mktemp("privacy")
    (folder / "jwks.json").write_text(json.dumps(jwks(key)))
    config = write_config(
        folder / "lbp.toml",
        [{"issuer": EHR, "jwks_file": "jwks.json", "fhir_servers": [proxy.base_url.rstrip("/")]}],
        fhir={"allow_http": True, "allow_private_networks": True},
        public_base_url=PUBLIC, fhir_allowed_servers=["loopback"], rate_limit_per_minute=0, log_level="DEBUG",
        fhir_max_retries=0)
    service = start_service(config=str(config))
    issuer = Issuer(EHR, key, PUBLIC)
    auth = issuer.auth(service.base_url)
    secrets = [PATIENT_ID, GIVEN, FAMILY, MRN, FHIR_TOKEN]
    try:
        _full_run(service, proxy, issuer, auth, secrets)
    finally:
        proxy.stop()
    time.sleep(0.5)  # let the workers write their last lines
    log = service.log()
    for token in auth.tokens + [t for t in secrets if t.count(".") == 2]:
        secrets += [token, *token.split(".")]
    return log, secrets


def _full_run(service, proxy, issuer: Issuer, auth, secrets: list[str]) -> None:
    ehr = EhrClient(service.base_url, proxy.base_url)
    ehr._session.auth = auth  # a fresh signed JWT on every call to the service, none to the FHIR server
    context = {"patientId": PATIENT_ID}
    orders = {"draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft_mri()}]}}

    cards = []
    for hook, extra in (("patient-view", {}), ("encounter-start", {"encounterId": f"{PATIENT_ID}-enc"}),
                        ("order-select", {**orders, "selections": [f"ServiceRequest/{PATIENT_ID}-sr"]}),
                        ("order-sign", orders)):
        for prefetch in ("full", "none"):  # the EHR prefetches, or the service fetches with the token
            response = ehr.call(hook, {**context, **extra}, prefetch=prefetch, token=FHIR_TOKEN)
            assert response.status_code == 200, response.text
            cards += [(ehr.service_for(hook)["id"], c["uuid"]) for c in response.json()["cards"]]
    assert cards

    service_id, card = cards[0]
    feedback = {"feedback": [{"card": card, "outcome": "accepted", "acceptedSuggestions": [],
                              "outcomeTimestamp": "2026-01-01T00:00:00Z"}]}
    assert ehr._session.post(f"{service.base_url}/cds-services/{service_id}/feedback", json=feedback,
                             timeout=30).status_code == 200

    # FHIR errors while the service fetches: a 500, a 401, an OperationOutcome echoing the patient.
    proxy.status("Observation", 500)
    proxy.operation_outcome("MedicationRequest", f"no access to {GIVEN} {FAMILY} ({MRN}) id {PATIENT_ID}",
                            status=403)
    assert ehr.call("patient-view", context, prefetch="none", token=FHIR_TOKEN).status_code == 200
    proxy.reset()
    proxy.status("Condition", 401)
    assert ehr.call("patient-view", context, prefetch="none", token=FHIR_TOKEN).status_code == 412
    proxy.reset()

    # Invalid requests naming the patient.
    service_id, body = ehr.build_request("patient-view", context, prefetch="none", token=FHIR_TOKEN)
    body["context"]["patientId"] = f"{GIVEN} {FAMILY}"
    assert ehr.post(service_id, body).status_code == 400

    # Authentication failures, each carrying a patient's request and a token.
    _, body = ehr.build_request("patient-view", context, prefetch="full", token=FHIR_TOKEN)
    path = "/cds-services/lbp-patient-view"
    now = int(time.time())
    refused = [
        issuer.token(path, exp=now - 600, iat=now - 900),  # expired
        issuer.token(path, aud=PUBLIC + "/cds-services"),  # wrong audience
        issuer.token(path, key=make_key("RS384", kid="privacy-key", slot="impostor")),  # bad signature
        alg_none(issuer.header(), issuer.claims(path)),
        Issuer("https://stranger.example", issuer.key, PUBLIC).token(path),
    ]
    replayed = issuer.token(path)
    refused.append(replayed)
    secrets += refused
    for token in [replayed, *refused]:
        requests.post(service.base_url + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert requests.post(service.base_url + path, json=body, timeout=30).status_code == 401
    ehr.close()


@pytest.mark.parametrize("what", ["patient id", "given name", "family name", "MRN", "FHIR access token"])
def test_the_log_holds_no_patient_data_and_no_fhir_token(run_log, what):
    log, secrets = run_log
    secret = dict(zip(["patient id", "given name", "family name", "MRN", "FHIR access token"], secrets, strict=False))
    assert secret[what] not in log


def test_the_log_holds_no_client_jwt_nor_any_part_of_one(run_log):
    log, secrets = run_log
    parts = [s for s in secrets[5:] if len(s) > 16]
    assert parts
    leaked = [p[:20] for p in parts if p in log]
    assert not leaked


def test_the_run_was_logged_with_the_reasons_of_its_refusals(run_log):
    log, _ = run_log
    assert "hook=patient-view" in log and "hook=order-sign" in log
    assert "outcome=HTTP 403 OperationOutcome" in log and "status=500" in log  # the FHIR errors happened
    for reason in ("expired", "wrong audience", "bad signature", "alg not allowed", "unknown issuer",
                   "replay (jti already used)", "missing Authorization header"):
        assert f"reason={reason}" in log


# ================================================================ note text (issue 12, item 5)
#
# A patient whose notes hold distinctive words in a red-flag sentence (the card quotes it), in a sentence
# with no red flag, in a negated one and in the family history, one note inline and one in a Binary. The
# service runs at DEBUG, the most verbose level it has, with loguru's default sink (stderr, DEBUG) left as
# it is in production: medspaCy's sentence splitter (PyRuSH) logs tokens and spans through loguru at
# DEBUG, so a reader that let it would write the note into this log.

NOTES_PATIENT = f"notes{RUN}"
QUOTED_WORD = f"Quillayute{RUN}"    # in the red-flag sentence: the card quotes it
QUIET_WORD = f"Xanthippe{RUN}"      # in a sentence without a red flag
NEGATED_WORD = f"Brobdingnag{RUN}"  # in a negated red flag
FAMILY_WORD = f"Zanzibarine{RUN}"   # in the family history
BINARY_WORD = f"Ouagadougou{RUN}"   # in the note the service reads from a Binary
FLAG_SENTENCE = f"New urinary retention since the {QUOTED_WORD} trip."
INLINE_NOTE = (
    "HISTORY OF PRESENT ILLNESS:\n"
    f"Low back pain for three weeks after lifting crates at the {QUIET_WORD} market. {FLAG_SENTENCE} "
    f"She denies saddle anaesthesia after the {NEGATED_WORD} ride.\n\n"
    "FAMILY HISTORY:\n"
    f"Mother had breast cancer treated at {FAMILY_WORD} hospital.\n\n"
    "PLAN:\nReturn at once if numbness in the groin develops.\n")
BINARY_NOTE = f"HISTORY OF PRESENT ILLNESS:\nPain wakes her at night since the move to {BINARY_WORD} street.\n"
NOTE_WORDS = [QUOTED_WORD, QUIET_WORD, NEGATED_WORD, FAMILY_WORD, BINARY_WORD]


def _document_reference(ident: str, attachment: dict) -> dict:
    return {"resourceType": "DocumentReference", "id": ident, "status": "current", "docStatus": "final",
            "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3"}], "text": "Progress note"},
            "category": [{"coding": [{"system": "http://hl7.org/fhir/us/core/CodeSystem/"
                                                "us-core-documentreference-category", "code": "clinical-note"}]}],
            "subject": {"reference": f"Patient/{NOTES_PATIENT}"}, "date": f"{today().isoformat()}T09:00:00Z",
            "content": [{"attachment": attachment}]}


def patient_with_notes() -> dict:
    """Example 05 (low back pain, nothing else coded) under a unique id, with two progress notes."""
    from cds_service.cli import EXAMPLES_DIR

    text = json.dumps(load_file(EXAMPLES_DIR / "05-uncomplicated-back-pain.json", today()))
    bundle = json.loads(text.replace("demo-simple", NOTES_PATIENT))
    plain = "text/plain; charset=utf-8"
    resources = [
        _document_reference(f"{NOTES_PATIENT}-inline", {"contentType": plain,
                                                         "data": base64.b64encode(INLINE_NOTE.encode()).decode()}),
        {"resourceType": "Binary", "id": f"{NOTES_PATIENT}-text", "contentType": plain,
         "data": base64.b64encode(BINARY_NOTE.encode()).decode()},
        _document_reference(f"{NOTES_PATIENT}-binary", {"contentType": plain, "url": f"Binary/{NOTES_PATIENT}-text"}),
    ]
    bundle["entry"] += [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                        for r in resources]
    return bundle


@pytest.fixture(scope="module")
def notes_run(tmp_path_factory, fhir_server):
    """Two patient-view calls (prefetch from the EHR, and the service fetching for itself) for the patient
    with notes, at DEBUG; returns (service log, the cards of each call)."""
    fhir_server.load_transaction(patient_with_notes())
    # loguru's production defaults, spelt out so that no variable of the test environment can quieten it.
    service = RunningService(tmp_path_factory.mktemp("notes-privacy"),
                             {"LBP_LOG_LEVEL": "DEBUG", "LOGURU_LEVEL": "DEBUG", "LOGURU_AUTOINIT": "True"})
    ehr = EhrClient(service.base_url, fhir_server.base_url)
    cards = {}
    try:
        for prefetch in ("full", "none"):
            response = ehr.call("patient-view", {"patientId": NOTES_PATIENT}, prefetch=prefetch)
            assert response.status_code == 200, response.text
            cards[prefetch] = response.json()["cards"]
        time.sleep(0.5)  # let the workers write their last lines
        log = service.log()
    finally:
        ehr.close()
        service.stop()
    return log, cards


def test_the_log_of_the_notes_run_holds_what_the_workers_wrote_to_stderr(notes_run):
    log, _cards = notes_run
    assert log.count("hook=patient-view") >= 2  # the service's own lines: loguru's would land beside them


def test_the_card_quotes_the_red_flag_sentence_of_the_note(notes_run):
    _log, cards = notes_run
    for prefetch in ("full", "none"):
        assert QUOTED_WORD in json.dumps(cards[prefetch]), f"prefetch={prefetch}: the card does not quote the note"


@pytest.mark.parametrize("word", NOTE_WORDS, ids=["quoted", "no flag", "negated", "family history", "binary"])
def test_the_log_holds_no_word_of_the_notes(notes_run, word):
    log, _cards = notes_run
    assert word not in log


def test_the_log_holds_no_fragment_of_the_notes(notes_run):
    log, _cards = notes_run
    text = INLINE_NOTE + BINARY_NOTE
    fragments = {text[i:i + 16] for i in range(0, len(text) - 16)} - {""}
    leaked = sorted(f for f in fragments if f in log)
    assert not leaked
