"""The FHIR client's limits hold against hostile servers: trickled bodies, redirects, credentials in URLs."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cds_service.fhir_client import FhirClient
from cds_service.outbound import OutboundRefused, policy_for
from cds_service.settings import load_settings


class Trickle(BaseHTTPRequestHandler):
    """Announces a large body and sends it one byte at a time: each read succeeds, the whole never ends."""

    def do_GET(self):  # noqa: N802 (http.server API)
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:9/elsewhere")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        try:
            for _ in range(100000):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def trickle_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    server.shutdown()
    server.server_close()


def settings(**values):
    return load_settings(env={}, database_url="sqlite://", **values)


def test_a_trickled_body_ends_at_the_total_deadline_and_frees_the_workers(trickle_server, fhir_server):
    client = FhirClient(settings(fhir_total_timeout=1.5, fhir_read_timeout=1.0, fhir_max_workers=2,
                                 fhir_max_retries=0))
    started = time.monotonic()
    results = client.fetch_all(trickle_server, {"a": "Patient/x", "b": "Condition?patient=x"}, None)
    assert not results["a"].ok and "timed out" in results["a"].error
    assert time.monotonic() - started < 4
    time.sleep(0.5)  # the workers finish their read at the deadline and return to the pool
    started = time.monotonic()
    fresh = client.fetch_all(fhir_server.base_url, {"c": "Condition?patient=nobody"}, None)
    assert fresh["c"].ok and time.monotonic() - started < 2
    client.close()


def test_redirects_are_not_followed(trickle_server):
    client = FhirClient(settings(fhir_max_retries=0))
    result = client.fetch_all(trickle_server.replace("/fhir", "/redirect"), {"a": "Patient/x"}, "secret")["a"]
    assert not result.ok and result.status == 302
    client.close()


@pytest.mark.parametrize("url", ["http://user:pass@127.0.0.1:8080/fhir", "http://user@localhost/fhir"])
def test_a_fhir_server_url_with_credentials_is_never_allowed(url):
    with pytest.raises(OutboundRefused) as refused:
        policy_for(settings(fhir_allowed_servers="*"), None).check_url(url, base=True)
    assert refused.value.kinds == ("invalid",)


def test_a_page_over_the_size_cap_fails_without_being_read(trickle_server, monkeypatch):
    monkeypatch.setattr("cds_service.fhir_client.MAX_BODY_BYTES", 1000)  # the trickle announces 100,000 bytes
    client = FhirClient(settings(fhir_max_retries=0))
    result = client.fetch_all(trickle_server, {"a": "Patient/x"}, None)["a"]
    client.close()
    assert not result.ok and "larger than" in result.error and result.status == 200
