"""Measure the service against a parse-only baseline, in the same gunicorn configuration, with wrk.

    ./bench/run [--duration 10] [--connections 8] [--fetch-connections 2] [--sizes small,typical,large]
                [--notes 20] [--notes-patient typical] [--notes-connections 1,8]

Prefetch mode: the service and the baseline each get the same request body (a patient-view call with a
full prefetch) for three patient sizes. Notes: the service gets one patient's prefetch without notes,
then with progress notes of about 4 KB each in the clinical-notes key, first read (every request carries
note texts never sent before, so no cached result helps) and cached (the same texts every time). Fetch
mode: the request carries no prefetch, and the service fetches every key from the local FHIR test server
(tests/fhir_server) through a proxy that holds each request for a fixed delay (a remote EHR's FHIR
server). Output: a Markdown table on stdout and in
bench/out/results.md, the raw figures in bench/out/results.json and a chart in bench/out/bench.png.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
LUA = ROOT / "bench" / "post.lua"
sys.path.insert(0, str(ROOT / "tests"))  # the FHIR test server and the delaying proxy live with the tests

from fault_proxy import FaultProxy  # noqa: E402
from fhir_server_process import start_fhir_server  # noqa: E402

from cds_service.settings import load_settings  # noqa: E402

from .hook_requests import (  # noqa: E402
    body_for_wrk,
    body_with_note_holes,
    fetch_request,
    notes_for_wrk,
    notes_request,
    prefetch_request,
)
from .patients import as_transactions, patient_resources  # noqa: E402

NOTES_KINDS = ("none", "first read", "cached")


@dataclass
class Figures:
    scenario: str      # "prefetch" | "fetch" | "notes"
    size: str
    target: str        # "service" | "baseline"
    body_kib: int
    connections: int
    requests: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    direct_round_ms: float = 0.0  # fetch mode: the hook's FHIR queries asked of the server directly, in parallel
    notes: str = ""               # notes scenario: one of NOTES_KINDS

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


# ------------------------------------------------------------------------------------------- processes


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gunicorn:
    """A gunicorn on loopback in a subprocess, its output in a log file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], workdir: Path, port: int):
        self.name, self.port = name, port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                requests.get(self.base_url + "/", timeout=5)
                return
            except requests.RequestException:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{name} did not start within 180 s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


def start_service(workdir: Path) -> Gunicorn:
    """`lbp-redflags serve` with the default configuration: no file (authentication off), audit on."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LBP_")}
    env["LBP_DATABASE_URL"] = f"sqlite:///{workdir / 'bench.db'}"
    return Gunicorn("service", [str(Path(sys.executable).parent / "lbp-redflags"), "serve", "--port", str(port)],
                    env, workdir, port)


def start_baseline(workdir: Path) -> Gunicorn:
    """The parse-only endpoint under the service's gunicorn configuration."""
    settings = load_settings(env={})
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [str(Path(sys.executable).parent / "gunicorn"), "--bind", f"127.0.0.1:{port}",
               "--workers", str(settings.workers), "--worker-class", "gthread", "--threads", str(settings.threads),
               "--graceful-timeout", str(settings.graceful_timeout), "--access-logfile", "-",
               "--access-logformat", '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms', "--no-control-socket",
               "bench.baseline:app"]
    return Gunicorn("baseline", command, env, workdir, port)


# ------------------------------------------------------------------------------------------- wrk


MAX_DURATION = 180         # seconds: the longest a measurement is lengthened to (min_requests)
_RUNS = itertools.count(1)  # each wrk run varies note texts with its own number (post.lua)


def wrk(url: str, body: bytes, path: str, *, duration: int, connections: int, workdir: Path,
        notes: bytes | None = None) -> dict:
    """notes: the note templates (notes_for_wrk) when the body has note holes (body_with_note_holes)."""
    body_file = workdir / "body.json"
    body_file.write_bytes(body)
    env = {**os.environ, "BENCH_BODY": str(body_file), "BENCH_PATH": path, "BENCH_RUN": str(next(_RUNS))}
    env.pop("BENCH_NOTES", None)
    if notes is not None:
        (workdir / "notes.txt").write_bytes(notes)
        env["BENCH_NOTES"] = str(workdir / "notes.txt")
    threads = max(1, min(2, connections))
    result = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "30s",
                             "-s", str(LUA), url], capture_output=True, text=True, env=env,
                            timeout=duration + 120)
    line = next((line for line in result.stdout.splitlines() if line.startswith("BENCH_JSON ")), None)
    if result.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return json.loads(line.removeprefix("BENCH_JSON "))


def settle(raw: dict, duration: int) -> None:
    """Wait for the calls wrk left unanswered when it stopped (the service still works on them) to end, so
    that they do not slow the next run: as long as the slowest call took, or the whole run if none ended."""
    time.sleep(min(30.0, raw["p99_us"] / 1e6 if raw["requests"] else duration))


def measure(scenario: str, size: str, target: Gunicorn, service_id: str, body: bytes, *, duration: int,
            connections: int, workdir: Path, notes: bytes | None = None, check_body: bytes | None = None,
            notes_kind: str = "", min_requests: int = 0) -> Figures:
    """One wrk warm-up, then the measured run. check_body: the body of the check call, when `body` has
    holes that only post.lua fills (notes); its size is the size reported. min_requests: lengthen the run
    (up to MAX_DURATION) so that about this many calls complete: from the time the check call took, then
    measuring again for twice as long while fewer than half of them complete."""
    path = f"/cds-services/{service_id}"
    sent = check_body or body
    started = time.perf_counter()
    check = requests.post(target.base_url + path, data=sent.replace(b"00000000-0000-4000-8000-000000000000",
                                                                    b"11111111-1111-4111-8111-111111111111"),
                          headers={"Content-Type": "application/json"}, timeout=120)
    one_call = time.perf_counter() - started
    label = f"{scenario}/{size}" + (f"/{notes_kind}" if notes_kind else "")
    if min_requests:
        parallel = min(connections, os.cpu_count() or 1)  # calls beyond the cores share them
        duration = max(duration, min(MAX_DURATION, math.ceil(one_call * min_requests / parallel)))
    if check.status_code != 200:  # counted by wrk as errors (non-2xx) and shown in the table
        print(f"  warning: {target.name} answered {check.status_code} for {label}: {check.text[:300]}", flush=True)
    warm_up = min(3, duration)
    settle(wrk(target.base_url, body, path, duration=warm_up, connections=connections, workdir=workdir, notes=notes),
           warm_up)
    while True:
        raw = wrk(target.base_url, body, path, duration=duration, connections=connections, workdir=workdir,
                  notes=notes)
        if raw["requests"] >= min_requests // 2 or duration >= MAX_DURATION:  # the estimate was off by 2x at most
            break
        print(f"  {label}: {raw['requests']} calls completed in {duration} s, measuring again for longer", flush=True)
        settle(raw, duration)
        duration = min(MAX_DURATION, duration * 2)
    errors = sum(v for k, v in raw.items() if k.startswith("errors_"))
    figures = Figures(scenario, size, target.name, len(sent) // 1024, connections, raw["requests"],
                      raw["duration_us"] / 1e6, raw["p50_us"] / 1000, raw["p95_us"] / 1000, raw["p99_us"] / 1000,
                      errors, notes=notes_kind)
    print(f"  {label:24} {target.name:8} c{connections:<3} p50 {figures.p50_ms:8.1f} ms  p95 {figures.p95_ms:8.1f} ms  "
          f"p99 {figures.p99_ms:8.1f} ms  {figures.throughput:8.1f} req/s  errors {errors}", flush=True)
    return figures


NOTES_MIN_CALLS = 30  # a first read can take a second or more: enough calls for a p50 whatever it costs


def measure_notes(service: Gunicorn, size: str, count: int, *, duration: int, connections: int,
                  workdir: Path, min_calls: int = NOTES_MIN_CALLS) -> list[Figures]:
    """The same patient without notes, with `count` notes read for the first time on every request, and
    with the same notes every time (cached), one after the other against the same service."""
    plain_id, plain = prefetch_request(size)
    service_id, body, templates = notes_request(size, count)
    assert plain_id == service_id
    with_notes = body_for_wrk(body)
    never_read = body_for_wrk(notes_request(size, count, variant=f"c{next(_RUNS):07d}")[1])  # times a first read
    runs = {"none": (body_for_wrk(plain), None, None),
            "first read": (body_with_note_holes(body), notes_for_wrk(templates), never_read),
            "cached": (with_notes, None, None)}
    return [measure("notes", size, service, service_id, payload, duration=duration, connections=connections,
                    workdir=workdir, notes=notes, check_body=check_body, notes_kind=kind, min_requests=min_calls)
            for kind, (payload, notes, check_body) in runs.items()]


# ------------------------------------------------------------------------------------------- report


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    memory = next((int(line.split()[1]) // 1024 // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0)
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": memory, "python": platform.python_version(),
            "os": platform.platform(), "wrk": wrk_version.strip(), "load_average_at_start": os.getloadavg()}


def _ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator else "n/a"


def report(results: list[Figures], info: dict, delay_ms: float) -> str:
    def find(scenario: str, size: str, target: str) -> Figures | None:
        return next((f for f in results if (f.scenario, f.size, f.target) == (scenario, size, target)), None)

    lines = [f"Measured {info['date']} on {info['cpu']} ({info['cores']} cores, {info['memory_gib']} GiB), "
             f"Python {info['python']}, {info['wrk']}. Load average at start {info['load_average_at_start'][0]:.2f}, "
             f"at end {info['load_average_at_end'][0]:.2f}.",
             f"Service: `lbp-redflags serve`, default configuration (no file: authentication off; audit write on, "
             f"SQLite), gunicorn {info['workers']} workers x {info['threads']} threads on loopback. Baseline: the same "
             "gunicorn configuration, an endpoint that only parses the JSON body and answers {\"cards\": []}.",
             "", "Prefetch mode (the EHR sends the patient's record in the request):", "",
             "| patient | body | connections | service p50 / p95 / p99 (ms) | baseline p50 / p95 / p99 (ms) "
             "| p50 ratio | added p50 (ms) | service req/s | baseline req/s | throughput ratio |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for size in info["sizes"]:
        service, baseline = find("prefetch", size, "service"), find("prefetch", size, "baseline")
        if not service or not baseline:
            continue
        lines.append(
            f"| {size} | {service.body_kib} KiB | {service.connections} "
            f"| {service.p50_ms:.1f} / {service.p95_ms:.1f} / {service.p99_ms:.1f} "
            f"| {baseline.p50_ms:.1f} / {baseline.p95_ms:.1f} / {baseline.p99_ms:.1f} "
            f"| {_ratio(service.p50_ms, baseline.p50_ms)} | {service.p50_ms - baseline.p50_ms:+.1f} "
            f"| {service.throughput:.1f} | {baseline.throughput:.1f} "
            f"| {_ratio(service.throughput, baseline.throughput)} |")
    if not any(f.scenario == "fetch" for f in results):
        return "\n".join(lines + notes_report(results, info)) + "\n"
    lines += ["", f"Fetch mode (no prefetch: the service fetches every key, in parallel, from the local FHIR server "
                  f"behind a proxy adding {delay_ms:.0f} ms to every request; one round of parallel searches, "
                  "plus the next pages of a search one after another):", "",
              "| patient | connections | p50 / p95 / p99 (ms) | p50 / delay | added p50 over the delay (ms) "
              "| the same searches, server alone (ms) | p50 / (delay + server alone) | req/s | errors (non-2xx) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for size in info["sizes"]:
        fetched = find("fetch", size, "service")
        if fetched:
            lines.append(f"| {size} | {fetched.connections} | {fetched.p50_ms:.1f} / {fetched.p95_ms:.1f} / "
                         f"{fetched.p99_ms:.1f} | {_ratio(fetched.p50_ms, delay_ms)} "
                         f"| {fetched.p50_ms - delay_ms:+.1f} "
                         f"| {fetched.direct_round_ms:.1f} "
                         f"| {_ratio(fetched.p50_ms, delay_ms + fetched.direct_round_ms)} "
                         f"| {fetched.throughput:.1f} | {fetched.errors} |")
    lines += notes_report(results, info)
    return "\n".join(lines) + "\n"


NOTES_TARGET_MS = 50.0  # issue 12: reading 20 notes adds under 50 ms at p50, first read


def notes_rows(results: list[Figures]) -> list[tuple[Figures, Figures]]:
    """(figures, the same connections without notes) for each notes measurement with notes."""
    rows = []
    for figures in results:
        if figures.scenario == "notes" and figures.notes != "none":
            none = next((f for f in results if f.scenario == "notes" and f.notes == "none"
                         and f.connections == figures.connections), None)
            if none:
                rows.append((figures, none))
    return rows


def notes_summary(results: list[Figures]) -> list[str]:
    """One line per measurement with notes: the added p50 and the ratio, against the target for a first read."""
    out = []
    for figures, none in notes_rows(results):
        added = figures.p50_ms - none.p50_ms
        if not figures.requests or not none.requests:
            out.append(f"notes, {figures.notes}, {figures.connections} connection(s): no call completed")
            continue
        verdict = ""
        if figures.notes == "first read":
            verdict = f" (target: under {NOTES_TARGET_MS:.0f} ms: {'met' if added < NOTES_TARGET_MS else 'MISSED'})"
        out.append(f"notes, {figures.notes}, {figures.connections} connection(s): added p50 {added:+.1f} ms, "
                   f"p50 ratio {_ratio(figures.p50_ms, none.p50_ms)}{verdict}")
    return out


def notes_report(results: list[Figures], info: dict) -> list[str]:
    measured = [f for f in results if f.scenario == "notes"]
    if not measured:
        return []
    lines = ["", f"Notes (prefetch mode; the {measured[0].size} patient without notes and with {info['notes']} "
                 "progress notes of about 4 KB each, inline base64 text/plain DocumentReferences in `clinicalNotes`; "
                 "first read: every request carries note texts the service has not read before, so no cached "
                 "result helps; cached: the same texts on every request):", "",
             "| notes | body | connections | p50 / p95 / p99 (ms) | p50 ratio to no notes | added p50 (ms) "
             "| req/s | throughput ratio | errors (non-2xx) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for figures in sorted(measured, key=lambda f: (f.connections, NOTES_KINDS.index(f.notes))):
        none = next(f for f in measured if f.notes == "none" and f.connections == figures.connections)
        kind = "none" if figures.notes == "none" else f"{info['notes']}, {figures.notes}"
        lines.append(f"| {kind} | {figures.body_kib} KiB | {figures.connections} "
                     f"| {figures.p50_ms:.1f} / {figures.p95_ms:.1f} / {figures.p99_ms:.1f} "
                     f"| {_ratio(figures.p50_ms, none.p50_ms)} | {figures.p50_ms - none.p50_ms:+.1f} "
                     f"| {figures.throughput:.1f} | {_ratio(figures.throughput, none.throughput)} | {figures.errors} |")
    return lines + [""] + [f"- {line}" for line in notes_summary(results)]


def chart(results: list[Figures], sizes: list[str], delay_ms: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 5.6))
    width = 0.13
    series = [(target, percentile) for target in ("baseline", "service") for percentile in ("p50", "p95", "p99")]
    for index, (target, percentile) in enumerate(series):
        values = [next((getattr(f, f"{percentile}_ms") for f in results
                        if (f.scenario, f.size, f.target) == ("prefetch", s, target)), 0) for s in sizes]
        positions = [i + (index - 2.5) * width for i in range(len(sizes))]
        left.bar(positions, values, width, label=f"{target} {percentile}",
                 color=("#9ecae1", "#4292c6", "#08519c", "#fdae6b", "#f16913", "#a63603")[index])
    left.set_xticks(range(len(sizes)), sizes)
    left.set_yscale("log")
    left.set_ylabel("latency (ms, log scale)")
    left.set_title("Prefetch mode: service vs parse-only baseline")
    left.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3)
    fetched = [next((f for f in results if (f.scenario, f.size, f.target) == ("fetch", s, "service")), None)
               for s in sizes]
    for index, percentile in enumerate(("p50", "p95", "p99")):
        right.bar([i + (index - 1) * 0.25 for i in range(len(sizes))],
                  [getattr(f, f"{percentile}_ms") if f else 0 for f in fetched], 0.25, label=percentile,
                  color=("#74c476", "#31a354", "#006d2c")[index])
    right.scatter(range(len(sizes)), [delay_ms + f.direct_round_ms if f else 0 for f in fetched], marker="_", s=900,
                  color="black", zorder=3, label="delay + the same searches, server alone")
    right.axhline(delay_ms, color="black", linestyle="--", label=f"one FHIR request ({delay_ms:.0f} ms)")
    right.axhline(2 * delay_ms, color="grey", linestyle=":", label="2x the delay")
    right.set_xticks(range(len(sizes)), sizes)
    right.set_ylabel("latency (ms)")
    right.set_title("Fetch mode: hook latency vs the FHIR delay")
    right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


# ------------------------------------------------------------------------------------------- main


def direct_round_ms(fhir_base: str, size: str) -> float:
    """The hook's prefetch queries (first pages) asked of the FHIR server directly, all in parallel as the
    service asks them: wall time, median of three. What the server itself takes, before the proxy's delay
    and without the service (the test server answers one query at a time, so this is their sum)."""
    import statistics
    from concurrent.futures import ThreadPoolExecutor

    from cds_service.services import prefetch_templates

    patient_id = patient_resources(size)[0]["id"]
    page_size = load_settings(env={}).fhir_page_size
    urls = []
    for template in prefetch_templates().values():
        query = template.replace("{{context.patientId}}", patient_id)
        urls.append(fhir_base.rstrip("/") + "/" + query + (f"&_count={page_size}" if "?" in query else ""))

    def get(url: str) -> None:
        requests.get(url, headers={"Accept": "application/fhir+json"}, timeout=120).raise_for_status()

    times = []
    with ThreadPoolExecutor(len(urls)) as pool:
        for _ in range(3):
            started = time.perf_counter()
            list(pool.map(get, urls))
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def duration_for(size: str, duration: int) -> int:
    """A large patient's calls take long: give them time to complete enough requests for percentiles."""
    return duration * 3 if size == "large" else duration


def load_patients(fhir_server, sizes: list[str]) -> None:
    for size in sizes:
        for bundle in as_transactions(patient_resources(size)):
            fhir_server.load_transaction(bundle, timeout=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10,
                        help="seconds of load per measurement (default 10; three times that for the large patient)")
    parser.add_argument("--connections", type=int, default=8,
                        help="concurrent connections in prefetch mode (default 8: 2 workers x 4 threads)")
    parser.add_argument("--fetch-connections", type=int, default=1,
                        help="concurrent connections in fetch mode (default 1: latency, not server capacity)")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="delay the proxy adds to each FHIR request")
    parser.add_argument("--sizes", default="small,typical,large")
    parser.add_argument("--skip-fetch", action="store_true", help="prefetch mode only (no Node.js needed)")
    parser.add_argument("--notes", type=int, default=20, help="progress notes of about 4 KB in the notes scenario "
                        "(default 20; 0 skips the scenario)")
    parser.add_argument("--notes-patient", default="typical", choices=["small", "typical", "large"],
                        help="the patient the notes are added to (default typical)")
    parser.add_argument("--notes-connections", default="1,8",
                        help="concurrent connections of the notes scenario, comma-separated (default 1,8: the "
                             "latency of one call, and under the prefetch mode's load)")
    args = parser.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    notes_connections = [int(c) for c in args.notes_connections.split(",") if c.strip()]
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (bench/run installs it: apt-get install wrk)", file=sys.stderr)
        return 2
    settings = load_settings(env={})
    print("lbp-redflags benchmark: default configuration - authentication OFF (no configuration file, loopback), "
          "audit write ON (SQLite), metrics and JSON logs on; gunicorn "
          f"{settings.workers} workers x {settings.threads} threads on 127.0.0.1.", flush=True)
    info = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), **machine(), "sizes": sizes,
            "workers": settings.workers, "threads": settings.threads, "duration_s": args.duration,
            "notes": args.notes,
            "command": "./bench/run " + " ".join(argv if argv is not None else sys.argv[1:])}
    OUT.mkdir(exist_ok=True)
    results: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="lbp-bench-") as tmp:
        workdir = Path(tmp)
        service = start_service(workdir)
        baseline = start_baseline(workdir)
        try:
            print("prefetch mode", flush=True)
            for size in sizes:
                service_id, body = prefetch_request(size)
                payload = body_for_wrk(body)
                for target in (baseline, service):
                    results.append(measure("prefetch", size, target, service_id, payload,
                                           duration=duration_for(size, args.duration), connections=args.connections,
                                           workdir=workdir))
            baseline.stop()
            if args.notes:
                print(f"notes ({args.notes} progress notes, the {args.notes_patient} patient)", flush=True)
                for connections in notes_connections:
                    results += measure_notes(service, args.notes_patient, args.notes, duration=args.duration,
                                             connections=connections, workdir=workdir)
            if not args.skip_fetch:
                print(f"fetch mode (FHIR test server behind a {args.delay_ms:.0f} ms proxy)", flush=True)
                for size in sizes:  # a fresh server per patient: searches scan only this patient's data
                    with start_fhir_server() as fhir_server:
                        load_patients(fhir_server, [size])
                        direct = direct_round_ms(fhir_server.base_url, size)
                        with FaultProxy(fhir_server.base_url) as proxy:
                            proxy.delay(".*", args.delay_ms / 1000)
                            service_id, body = fetch_request(size, proxy.base_url)
                            figures = measure("fetch", size, service, service_id, body_for_wrk(body),
                                              duration=duration_for(size, args.duration),
                                              connections=args.fetch_connections, workdir=workdir)
                            figures.direct_round_ms = direct
                            results.append(figures)
        finally:
            service.stop()
            baseline.stop()
    info["load_average_at_end"] = os.getloadavg()
    table = report(results, info, args.delay_ms)
    print("\n" + table)
    for line in notes_summary(results):
        print(line)
    (OUT / "results.md").write_text(table)
    (OUT / "results.json").write_text(json.dumps({"machine": info, "delay_ms": args.delay_ms,
                                                  "results": [asdict(f) | {"throughput": f.throughput}
                                                              for f in results]}, indent=2))
    chart(results, sizes, args.delay_ms, OUT / "bench.png")
    print(f"written: {OUT / 'results.md'}, {OUT / 'results.json'}, {OUT / 'bench.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
