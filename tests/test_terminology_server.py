"""The optional terminology server, tested against a local stand-in on loopback.

The stand-in is a small http.server that answers as a FHIR R4 terminology server does
(``CodeSystem/$subsumes`` and ``ValueSet/$validate-code`` returning Parameters resources) over a
tiny SNOMED CT hierarchy. Its leaf concepts are fictitious ids with valid Verhoeff check digits,
standing for descendants that no embedded list names; their parents are real concepts.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import today

from cds_service.app import create_app
from cds_service.example_patients import hook_request, resolve_dates
from cds_service.settings import load_settings
from cds_service.terminology_server import (
    TerminologyServer,
    TerminologyServerError,
    http_session,
    lookups,
    snomed_codes,
)
from fhir_mappings.code_formats import verhoeff_valid
from fhir_mappings.terminology import SNOMED, server_answers, value_set


def sctid(item: str) -> str:
    """A short-format SNOMED CT concept id (partition 00) with its Verhoeff check digit."""
    return next(item + "00" + d for d in "0123456789" if verhoeff_valid(item + "00" + d))


MALIGNANT = "363346000"  # Malignant neoplastic disease (disorder)
BCC = "254701007"  # Basal cell carcinoma of skin (disorder)
NEW_CARCINOMA = sctid("9990001")  # stands for a carcinoma subtype no list names
NEW_BCC = sctid("9990002")  # stands for a basal cell carcinoma subtype no list names
NEW_BENIGN = sctid("9990003")  # stands for a benign neoplasm no list names
PARENT = {NEW_CARCINOMA: MALIGNANT, NEW_BCC: BCC, BCC: MALIGNANT}


def ancestors_or_self(code: str) -> set[str]:
    seen = {code}
    while code in PARENT:
        code = PARENT[code]
        seen.add(code)
    return seen


class StandIn(BaseHTTPRequestHandler):
    server: StandInServer

    def log_message(self, *args):  # keep the test output quiet
        pass

    def do_GET(self):
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.server.requests.append((url.path, query))
        time.sleep(self.server.delay)
        if url.path == "/fhir/CodeSystem/$subsumes" and self.server.offers_subsumes:
            a, b = query.get("codeA"), query.get("codeB")
            if query.get("system") != SNOMED or not a or not b:
                return self.reply(400, {"resourceType": "OperationOutcome", "issue": []})
            outcome = ("equivalent" if a == b else "subsumes" if a in ancestors_or_self(b)
                       else "subsumed-by" if b in ancestors_or_self(a) else "not-subsumed")
            return self.reply(200, {"resourceType": "Parameters",
                                    "parameter": [{"name": "outcome", "valueCode": outcome}]})
        if url.path == "/fhir/ValueSet/$validate-code":
            root = query.get("url", "").rsplit("isa/", 1)[-1]
            result = root in ancestors_or_self(query.get("code", ""))
            return self.reply(200, {"resourceType": "Parameters",
                                    "parameter": [{"name": "result", "valueBoolean": result}]})
        outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-supported"}]}
        return self.reply(501 if "$subsumes" in url.path else 404, outcome)

    def reply(self, status: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class StandInServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, offers_subsumes: bool = True, delay: float = 0.0):
        super().__init__(("127.0.0.1", 0), StandIn)
        self.offers_subsumes, self.delay, self.requests = offers_subsumes, delay, []
        self.url = f"http://127.0.0.1:{self.server_address[1]}/fhir"


@pytest.fixture
def stand_in():
    servers = []

    def start(**kwargs) -> StandInServer:
        server = StandInServer(**kwargs)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def terminology(url: str, timeout: float = 5.0) -> TerminologyServer:
    return TerminologyServer(url, timeout, 1000, http_session(url, load_settings(env={})))


def condition(code: str, display: str | None = None) -> dict:
    coding = {"system": SNOMED, "code": code}
    if display:
        coding["display"] = display
    return {"resourceType": "Condition", "code": {"coding": [coding]}}


def test_a_descendant_the_server_places_under_malignancy_is_a_cancer(stand_in):
    answers = terminology(stand_in().url).answers([NEW_CARCINOMA])
    assert answers[("malignancy", NEW_CARCINOMA)] is True
    with server_answers(answers):
        found = value_set("malignancy").match(condition(NEW_CARCINOMA)["code"])
    assert found is not None and found.how == "code"


def test_without_the_server_an_unlisted_code_without_display_is_not_a_cancer():
    assert value_set("malignancy").match(condition(NEW_CARCINOMA)["code"]) is None


def test_an_excluded_root_wins_over_malignancy(stand_in):
    answers = terminology(stand_in().url).answers([NEW_BCC])
    assert answers[("malignancy", NEW_BCC)] is False
    with server_answers(answers):
        assert value_set("malignancy").match(condition(NEW_BCC, "Basal cell carcinoma, new subtype")["code"]) is None


def test_the_servers_no_is_final_even_when_the_display_reads_like_cancer(stand_in):
    answers = terminology(stand_in().url).answers([NEW_BENIGN])
    assert answers[("malignancy", NEW_BENIGN)] is False
    concept = condition(NEW_BENIGN, "Malignant neoplasm of a new site (disorder)")["code"]
    with server_answers(answers):
        assert value_set("malignancy").match(concept) is None
    assert value_set("malignancy").match(concept) is not None  # without the server the fallback reads it


def test_codes_a_value_set_lists_are_never_asked_about_for_it(stand_in):
    server = stand_in()
    answers = terminology(server.url).answers(["254837009", "363346000"])  # breast cancer, malignancy
    assert not [key for key in answers if key[0] == "malignancy"]
    assert not [query for _, query in server.requests if query.get("codeA") == MALIGNANT]


def test_answers_are_cached(stand_in):
    server = stand_in()
    client = terminology(server.url)
    first = client.answers([NEW_CARCINOMA])
    asked = len(server.requests)
    assert asked > 0
    assert client.answers([NEW_CARCINOMA]) == first
    assert len(server.requests) == asked


def test_validate_code_is_used_when_subsumes_is_not_offered(stand_in):
    server = stand_in(offers_subsumes=False)
    answers = terminology(server.url).answers([NEW_CARCINOMA])
    assert answers[("malignancy", NEW_CARCINOMA)] is True
    assert any(path.endswith("$validate-code") and query["url"] == f"{SNOMED}?fhir_vs=isa/{MALIGNANT}"
               for path, query in server.requests)


def test_a_slow_server_leaves_the_codes_unanswered(stand_in):
    server = stand_in(delay=1.5)
    assert terminology(server.url, timeout=0.2).answers([NEW_CARCINOMA]) == {}


def test_an_unreachable_server_changes_nothing(tmp_path):
    settings = load_settings(env={}, terminology_server="http://127.0.0.1:9/fhir", terminology_timeout=1)
    assert lookups(settings, [condition(NEW_CARCINOMA)]) == {}


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/fhir", "file:///etc/passwd", "http://user:secret@127.0.0.1/fhir",
                                 "not a url"])
def test_only_plain_http_urls_are_used(url):
    with pytest.raises(TerminologyServerError):
        http_session(url, load_settings(env={}))
    assert lookups(load_settings(env={}, terminology_server=url), [condition(NEW_CARCINOMA)]) == {}


def test_no_server_configured_means_no_lookups():
    assert lookups(load_settings(env={}), [condition(NEW_CARCINOMA)]) == {}


def test_snomed_codes_are_collected_from_any_depth_and_malformed_ones_dropped():
    resources = {"Condition": [condition(NEW_CARCINOMA), condition("12345")],
                 "Observation": [{"valueCodeableConcept": {"coding": [{"system": "http://snomed.info/id",
                                                                       "code": NEW_BCC}]}}]}
    assert snomed_codes([resources]) == [NEW_CARCINOMA, NEW_BCC]


def test_the_service_asks_the_server_and_finds_the_cancer(stand_in, tmp_path):
    """Through the hook endpoint: a lung-cancer patient whose cancer is coded only with a descendant
    no list names, and a new unilateral tingling: an emergency once the server places the code."""
    server = stand_in()
    resources = resolve_dates([
        {"resourceType": "Patient", "id": "pat1", "gender": "male", "birthDate": "@today-63y"},
        {"resourceType": "Condition", "id": "lbp", "subject": {"reference": "Patient/pat1"},
         "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                        "code": "active"}]},
         "code": {"coding": [{"system": SNOMED, "code": "279039007", "display": "Low back pain"}]},
         "onsetDateTime": "@today-2w"},
        {"resourceType": "Condition", "id": "ca", "subject": {"reference": "Patient/pat1"},
         "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                        "code": "active"}]},
         "code": {"coding": [{"system": SNOMED, "code": NEW_CARCINOMA}]}, "onsetDateTime": "@today-1y"},
        {"resourceType": "Condition", "id": "tingling", "subject": {"reference": "Patient/pat1"},
         "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                        "code": "active"}]},
         "code": {"coding": [{"system": SNOMED, "code": "91019004", "display": "Paresthesia"}],
                  "text": "New tingling in the left foot"}, "onsetDateTime": "@today-3d"},
    ], today())
    service_id, body = hook_request("patient-view", resources)

    def tier(**settings):
        app = create_app(load_settings(env={}, database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", **settings))
        response = app.test_client().post(f"/cds-services/{service_id}", json=body)
        assert response.status_code == 200
        cards = response.get_json()["cards"]
        return cards[0]["extension"]["lbp-redflags"]["tier"] if cards else None

    assert tier() != "emergency"
    assert tier(terminology_server=server.url) == "emergency"
    assert any(query.get("codeB") == NEW_CARCINOMA for _, query in server.requests)
