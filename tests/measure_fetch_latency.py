"""Latency of a patient-view call in fetch mode (no prefetch) for a large patient. Not a test: run it.

    .venv/bin/python tests/measure_fetch_latency.py [--repo DIR] [--calls 10] [--latency 0.15]

Stores one patient with ~2,400 resources (1,800 lab and vital-sign Observations over four years,
100 survey answers, 150 Conditions, 200 MedicationRequests, 60 Procedures, 120 Encounters) in the
test FHIR server, starts the service from --repo (default: this checkout; give an older checkout to
compare), and times --calls hook calls after one warm-up call.

The in-memory test server answers one request at a time and rescans every Observation for each
page, which an EHR's indexed, concurrent FHIR API does not. So the EHR is played by the fault proxy:
each distinct search is answered once by the test server and then from memory, after --latency
seconds plus 1 ms per entry returned (a remote EHR's round trip), concurrently.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).parent))
from fault_proxy import FaultProxy, Reply  # noqa: E402
from fhir_server_process import start_fhir_server  # noqa: E402

ROOT = Path(__file__).parent.parent
SUBJECT = {"reference": "Patient/big"}
LOINC = [("8310-5", "vital-signs", "Cel", 36.8), ("29463-7", "vital-signs", "kg", 70),
         ("718-7", "laboratory", "g/dL", 13.5), ("4537-7", "laboratory", "mm/h", 12),
         ("2951-2", "laboratory", "mmol/L", 140), ("2160-0", "laboratory", "mg/dL", 0.9)]


def category(code: str) -> list[dict]:
    return [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": code}]}]


def large_patient(today: date) -> list[dict]:
    def ago(days: int) -> str:
        return (today - timedelta(days=days)).isoformat()

    out: list[dict] = [
        {"resourceType": "Patient", "id": "big", "gender": "female", "birthDate": "1961-03-02"},
        {"resourceType": "Condition", "id": "big-lbp", "subject": SUBJECT, "onsetDateTime": ago(20),
         "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                        "code": "active"}]},
         "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "M54.50"}],
                  "text": "Low back pain"}}]
    out += [{"resourceType": "Condition", "id": f"big-c{i}", "subject": SUBJECT, "code": {"text": f"problem {i}"},
             "onsetDateTime": ago(30 * i)} for i in range(150)]
    for i in range(1800):
        code, cat, unit, value = LOINC[i % len(LOINC)]
        out.append({"resourceType": "Observation", "id": f"big-o{i}", "status": "final", "subject": SUBJECT,
                    "category": category(cat), "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                    "effectiveDateTime": ago(i % 1400),
                    "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org",
                                      "code": unit}})
    out += [{"resourceType": "Observation", "id": f"big-s{i}", "status": "final", "subject": SUBJECT,
             "category": category("survey"), "code": {"text": f"question {i}"}, "valueString": "no",
             "effectiveDateTime": ago(5 * i)} for i in range(100)]
    out += [{"resourceType": "MedicationRequest", "id": f"big-m{i}", "status": "completed", "intent": "order",
             "subject": SUBJECT, "medicationCodeableConcept": {"text": f"drug {i}"}, "authoredOn": ago(10 * i)}
            for i in range(200)]
    out += [{"resourceType": "Procedure", "id": f"big-p{i}", "status": "completed", "subject": SUBJECT,
             "code": {"text": f"procedure {i}"}, "performedDateTime": ago(40 * i)} for i in range(60)]
    out += [{"resourceType": "Encounter", "id": f"big-e{i}", "status": "finished", "subject": SUBJECT,
             "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
             "period": {"start": ago(12 * i)}} for i in range(120)]
    return out


def remote_ehr(proxy: FaultProxy, latency: float) -> None:
    """Every response: the test server's answer (computed once), after a remote EHR's round trip."""
    cache: dict[str, Reply] = {}
    lock = threading.Lock()

    def answer(proxy: FaultProxy, request) -> Reply:
        with lock:
            reply = cache.get(request.target)
            if reply is None:
                reply = cache[request.target] = proxy.forward(request)
        try:
            entries = len(json.loads(reply.body).get("entry") or [])
        except ValueError:
            entries = 0
        time.sleep(latency + entries / 1000)
        return Reply(reply.status, reply.body, dict(reply.headers))

    proxy.add_rule(r"/", answer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=str(ROOT))
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.15)
    args = parser.parse_args()

    server = start_fhir_server()
    resources = large_patient(date.today())
    for start in range(0, len(resources), 50):
        server.load_transaction({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in resources[start:start + 50]]})
    proxy = FaultProxy(server.base_url).start()
    remote_ehr(proxy, args.latency)

    with tempfile.TemporaryDirectory() as tmp:
        port = 18000 + os.getpid() % 1000
        env = {k: v for k, v in os.environ.items() if not k.startswith("LBP_")}
        env.update(PYTHONPATH=args.repo, LBP_DATABASE_URL=f"sqlite:///{tmp}/lat.db", LBP_WORKERS="1")
        service = subprocess.Popen([sys.executable, "-m", "cds_service.cli", "serve", "--port", str(port)],
                                   cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if requests.get(base + "/healthz", timeout=1).ok:
                        break
                except requests.ConnectionError:
                    time.sleep(0.2)
            body = {"hook": "patient-view", "fhirServer": proxy.base_url.rstrip("/"),
                    "context": {"userId": "Practitioner/1", "patientId": "big"}}
            times = []
            for call in range(args.calls + 1):
                body["hookInstance"] = str(uuid.uuid4())
                started = time.perf_counter()
                response = requests.post(f"{base}/cds-services/lbp-patient-view", json=body, timeout=120)
                response.raise_for_status()
                if call:   # the first call fills the proxy's answers
                    times.append(time.perf_counter() - started)
            cards = response.json()["cards"]
            print(f"{args.repo}: {len(resources)} resources, {len(proxy.requests) // (args.calls + 1)} FHIR requests "
                  f"a call, latency {args.latency} s + 1 ms/entry; {args.calls} calls: median "
                  f"{statistics.median(times) * 1000:.0f} ms (min {min(times) * 1000:.0f}, max "
                  f"{max(times) * 1000:.0f}); tiers {[c['extension']['lbp-redflags']['tier'] for c in cards]}; "
                  f"unavailable {[c['extension']['lbp-redflags'].get('unavailable') for c in cards]}")
        finally:
            service.terminate()
            try:
                service.wait(10)
            except subprocess.TimeoutExpired:
                service.kill()
                service.wait(5)
            proxy.stop()
            server.stop()


if __name__ == "__main__":
    main()
