"""lbp-redflags command line: serve | migrate | purge | demo | load-fhir | check."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

from .example_patients import SERVICE_FOR_HOOK as HOOK_SERVICE
from .settings import SettingsError, load_settings, startup_problems

EXAMPLES_DIR = Path(__file__).parent / "example_patients"


# ---------------------------------------------------------------- serve

def _metrics_directory() -> str:
    """A directory of our own for the workers' metric files (prometheus-client multiprocess mode).

    Set before the app (and prometheus_client) is imported: the client picks its mode at import.
    """
    path = tempfile.mkdtemp(prefix="lbp-redflags-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def cmd_serve(args) -> int:
    from gunicorn.app.base import BaseApplication
    from gunicorn.glogging import Logger

    try:
        settings = load_settings(args.config, host=args.host, port=args.port, workers=args.workers)
    except SettingsError as exc:
        print(f"lbp-redflags: {exc}", file=sys.stderr)
        return 2
    problems = startup_problems(settings)
    if problems:
        for problem in problems:
            print(f"lbp-redflags: {problem}", file=sys.stderr)
        return 2
    if settings.local_profile:
        print("lbp-redflags: no configuration file: local profile (loopback only, authentication off, "
              "plain-http and loopback FHIR servers allowed, no rate limit)", flush=True)
    metrics_dir = _metrics_directory()
    from prometheus_client import multiprocess

    from .app import create_app, json_formatter

    master = os.getpid()
    try:
        app = create_app(settings)
    except BaseException:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        raise
    start_retention(app.extensions["lbp_store"], settings.retention_days)
    bind = f"[{settings.host}]:{settings.port}" if ":" in settings.host else f"{settings.host}:{settings.port}"

    def when_ready(server) -> None:
        # Printed by the master once its socket is bound: a port in use never says "serving".
        for listener in server.LISTENERS:
            url = str(listener) if "://" in str(listener) else f"http://{listener}"
            print(f"lbp-redflags: serving CDS Hooks discovery at {url}/cds-services", flush=True)

    def child_exit(server, worker) -> None:
        multiprocess.mark_process_dead(worker.pid)  # its live gauges go; its counters still count

    class JsonLogger(Logger):
        """gunicorn's error and access logs as JSON lines, like the service's own."""

        def setup(self, cfg):
            super().setup(cfg)
            for logger in (self.error_log, self.access_log):
                for handler in logger.handlers:
                    handler.setFormatter(json_formatter())

    class Server(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", bind)
            self.cfg.set("workers", settings.workers)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", settings.threads)
            self.cfg.set("graceful_timeout", settings.graceful_timeout)
            self.cfg.set("timeout", int(settings.fhir_total_timeout) + 30)
            self.cfg.set("accesslog", "-")
            self.cfg.set("when_ready", when_ready)
            # Workers must not share the master's database connections (opened by the migration).
            self.cfg.set("post_fork", lambda _server, _worker: app.extensions["lbp_store"].engine.dispose(close=False))
            self.cfg.set("child_exit", child_exit)
            self.cfg.set("logger_class", JsonLogger)
            # Managed by signals (SIGTERM: graceful stop); no control socket shared in $HOME by every instance.
            self.cfg.set("control_socket_disable", True)
            # The access log keeps the path and status only: no query strings, no headers (tokens).
            self.cfg.set("access_log_format", '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms')

        def load(self):
            return app

    try:
        Server().run()
    finally:
        if os.getpid() == master:  # a worker leaves through here too (SystemExit after fork)
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


# ---------------------------------------------------------------- database: migrate, purge, retention

def cmd_migrate(args) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from .store import SchemaError, Store

    settings = load_settings(args.config)
    store = Store(settings.database_url, settings.patient_key)
    try:
        applied = store.migrate()
        current, _ = store.schema_status()
    except SchemaError as exc:
        print(f"lbp-redflags: {exc}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        print(f"lbp-redflags: cannot migrate the database: {exc.__class__.__name__}: {str(exc).splitlines()[0]}",
              file=sys.stderr)
        return 1
    print(f"lbp-redflags: database at revision {current}" + (f" (applied {', '.join(applied)})" if applied
                                                            else " (already up to date)"))
    return 0


def _purge(store, before) -> dict[str, int]:
    from datetime import UTC, datetime, time

    return store.purge(datetime.combine(before, time.min, UTC))


def cmd_purge(args) -> int:
    from datetime import date, timedelta

    from sqlalchemy.exc import SQLAlchemyError

    from .store import Store

    settings = load_settings(args.config)
    if args.before:
        try:
            before = date.fromisoformat(args.before)
        except ValueError:
            print(f"lbp-redflags: --before {args.before!r} is not a date (YYYY-MM-DD)", file=sys.stderr)
            return 2
    elif settings.retention_days:
        before = _today() - timedelta(days=settings.retention_days)
    else:
        print("lbp-redflags: retention_days is 0 (keep everything): give --before DATE to purge", file=sys.stderr)
        return 2
    if before > _today() + timedelta(days=1):
        print(f"lbp-redflags: --before {before} is in the future; to delete everything up to now give "
              f"--before {_today() + timedelta(days=1)}", file=sys.stderr)
        return 2
    try:
        counts = _purge(Store(settings.database_url, settings.patient_key), before)
    except SQLAlchemyError as exc:
        print(f"lbp-redflags: cannot purge: {exc.__class__.__name__}", file=sys.stderr)
        return 1
    print(f"lbp-redflags: deleted records from before {before}: "
          + ", ".join(f"{table} {count}" for table, count in counts.items()))
    return 0


def start_retention(store, retention_days: int) -> None:
    """Delete records older than retention_days now and every day after, in the serving process."""
    import logging
    import threading
    from datetime import timedelta

    from sqlalchemy.exc import SQLAlchemyError

    if not retention_days:
        return
    log = logging.getLogger("lbp_redflags.store")

    def purge() -> None:
        before = _today() - timedelta(days=retention_days)
        try:
            counts = _purge(store, before)
            log.info("retention: deleted records from before %s: %s", before, counts)
        except SQLAlchemyError as exc:
            log.error("retention purge failed: %s", exc.__class__.__name__)

    def run() -> None:
        while not stop.wait(24 * 3600):
            purge()

    # The first purge runs now, before gunicorn forks its workers: a master thread holding an SQLite
    # connection while a worker is forked leaves the worker's locks confused (the WAL deleted under it).
    purge()
    stop = threading.Event()
    threading.Thread(target=run, name="lbp-retention", daemon=True).start()


# ---------------------------------------------------------------- demo

def _today():
    from datetime import UTC, datetime

    return datetime.now(UTC).date()


def _resources(bundle: dict) -> list[dict]:
    return [e["resource"] for e in bundle.get("entry", []) if isinstance(e, dict) and "resource" in e]


def example_request(example: dict, *, with_prefetch: bool = True) -> tuple[str, dict]:
    from .example_patients import hook_request

    resources = _resources(example["bundle"])
    drafts = [r for r in resources if r["resourceType"] == "ServiceRequest" and r.get("status") == "draft"]
    others = [r for r in resources if r["resourceType"] != "ServiceRequest"]
    return hook_request(example["hook"], others, draft_orders=drafts, encounter_id=example.get("encounterId"),
                        with_prefetch=with_prefetch)


def format_cards(response: dict, width: int = 100) -> str:
    cards = response.get("cards") or []
    if not cards:
        return "  (no card: nothing to say for this patient)"
    out = []
    marks = {"critical": "!!! CRITICAL", "warning": "!!  WARNING", "info": "i   INFO"}
    for card in cards:
        ext = (card.get("extension") or {}).get("lbp-redflags", {})
        out.append(f"  [{marks.get(card['indicator'], card['indicator'])}] {card['summary']}")
        out.append(f"    tier: {ext.get('tier')}   red flags: {', '.join(ext.get('redFlags', [])) or 'none'}")
        for raw in card.get("detail", "").splitlines():
            line = raw.replace("**", "").replace("_", "")
            if not line.strip():
                continue
            out.extend(textwrap.wrap(line, width, initial_indent="    ", subsequent_indent="      "))
        for suggestion in card.get("suggestions", []):
            star = "*" if suggestion.get("isRecommended") else "-"
            out.append(f"    {star} suggestion: {suggestion['label']}")
        for ext_action in (response.get("systemActions") or []):
            for e in ext_action.get("resource", {}).get("extension", []):
                if e.get("url", "").endswith("pama-rating"):
                    code = e["valueCodeableConcept"]["coding"][0]["code"]
                    out.append(f"    rating of {ext_action['resource'].get('id')}: {code}")
    return "\n".join(out)


def cmd_demo(args) -> int:
    from .app import create_app

    # In-process, run by the operator: no CDS client to authenticate (auth.required applies to serve).
    settings = load_settings(args.config, database_url="sqlite://", log_level="WARNING", auth_required=False)
    client = create_app(settings).test_client()
    from .example_patients import examples

    for example in examples(_today()):
        service_id, body = example_request(example)
        response = client.post(f"/cds-services/{service_id}", json=body)
        print(f"\n=== {example['title']} ({example['hook']})")
        if response.status_code != 200:
            print(f"  error {response.status_code}: {response.get_json()}")
            continue
        print(format_cards(response.get_json()))
    return 0


# ---------------------------------------------------------------- integrators: load-fhir, check

def cmd_load_fhir(args) -> int:
    import requests

    base = args.base_url.rstrip("/")
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    if args.wait and not _wait_for_fhir(base, headers, args.wait):
        print(f"lbp-redflags: {base} did not answer GET /metadata within {args.wait:g} s", file=sys.stderr)
        return 1
    failed = 0
    for name in args.files:
        path = Path(name)
        if not path.exists() and (EXAMPLES_DIR / name).exists():
            path = EXAMPLES_DIR / name
        from .example_patients import load_file

        bundle = load_file(path, _today())
        try:
            response = requests.post(base, json=bundle, headers=headers, timeout=(5, 60))
        except requests.RequestException as exc:
            print(f"{path.name}: cannot reach {base}: {exc.__class__.__name__}", file=sys.stderr)
            failed += 1
            continue
        if response.status_code >= 300:
            print(f"{path.name}: HTTP {response.status_code}: {response.text[:500]}", file=sys.stderr)
            failed += 1
            continue
        statuses = [(e.get("response") or {}).get("status", "?") for e in response.json().get("entry", [])]
        bad = [s for s in statuses if not str(s).startswith("2")]
        print(f"{path.name}: {len(statuses)} entries, " + ("all stored" if not bad else f"failed: {bad}"))
        failed += bool(bad)
    return 1 if failed else 0


def _wait_for_fhir(base: str, headers: dict, seconds: float) -> bool:
    """Poll the server's CapabilityStatement until it answers 200 (a FHIR server still starting)."""
    import time

    import requests

    deadline = time.monotonic() + seconds
    while True:
        try:
            if requests.get(f"{base}/metadata", headers=headers, timeout=(5, 30)).status_code == 200:
                return True
        except requests.RequestException:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


def cmd_check(args) -> int:
    from .app import create_app

    # In-process, run by the operator: no CDS client to authenticate (auth.required applies to serve).
    settings = load_settings(args.config, database_url="sqlite://", log_level="WARNING", auth_required=False)
    client = create_app(settings).test_client()
    hook = args.hook
    context = {"userId": "Practitioner/check", "patientId": args.patient}
    if args.encounter:
        context["encounterId"] = args.encounter
    if hook == "encounter-start" and not args.encounter:
        print("lbp-redflags: encounter-start needs --encounter ID", file=sys.stderr)
        return 2
    if hook in ("order-select", "order-sign"):
        print("lbp-redflags: check runs patient-view or encounter-start (order hooks need draft orders)",
              file=sys.stderr)
        return 2
    body = {"hook": hook, "hookInstance": str(uuid.uuid4()), "fhirServer": args.fhir.rstrip("/"),
            "context": context}
    if args.token:
        body["fhirAuthorization"] = {"access_token": args.token, "token_type": "Bearer", "expires_in": 300,
                                     "scope": "patient/*.read", "subject": "lbp-redflags-check"}
    response = client.post(f"/cds-services/{HOOK_SERVICE[hook]}", json=body)
    error = (response.get_json(silent=True) or {}).get("error") or {}
    refused = [d for d in error.get("details", []) if d.get("field") == "fhirServer"]
    if response.status_code == 403 and refused:
        # The service's own words: why the server is refused, and which setting allows it.
        print(f"lbp-redflags: {args.fhir} is refused ({refused[0]['reason']}).\n"
              f"lbp-redflags: {error['message']}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"error {response.status_code}: {json.dumps(response.get_json(), indent=2)}", file=sys.stderr)
        return 1
    print(format_cards(response.get_json()))
    return 0


# ---------------------------------------------------------------- valuesets

def cmd_valuesets(args) -> int:
    from fhir_mappings.terminology import all_value_sets
    from fhir_mappings.valueset_report import report

    names = args.names or all_value_sets()
    unknown = sorted(set(names) - set(all_value_sets()))
    if unknown:
        print(f"lbp-redflags: unknown value set(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    if not args.report:
        print("\n".join(names))
        return 0
    print(report(names))
    return 0


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lbp-redflags", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the CDS Hooks service (gunicorn)")
    serve.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8080)")
    serve.add_argument("--workers", type=int, default=None, help="gunicorn worker processes (default 2)")
    serve.add_argument("--config", default=None, help="TOML configuration file (or LBP_CONFIG)")
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="create or upgrade the database schema (Alembic migrations)")
    migrate.add_argument("--config", default=None, help="TOML configuration file (or LBP_CONFIG)")
    migrate.set_defaults(func=cmd_migrate)

    purge = sub.add_parser("purge", help="delete hook calls, cards and feedback recorded before a date")
    purge.add_argument("--before", default=None, metavar="DATE",
                       help="YYYY-MM-DD (UTC); default: today minus retention_days")
    purge.add_argument("--config", default=None, help="TOML configuration file (or LBP_CONFIG)")
    purge.set_defaults(func=cmd_purge)

    demo = sub.add_parser("demo", help="run the bundled example patients through the hooks and print the cards")
    demo.add_argument("--config", default=None)
    demo.set_defaults(func=cmd_demo)

    load = sub.add_parser("load-fhir", help="POST example patients (transaction Bundles) to a FHIR server")
    load.add_argument("base_url")
    load.add_argument("files", nargs="+", help="transaction Bundle files (or names of the bundled examples)")
    load.add_argument("--token", default=None, help="bearer token for the FHIR server")
    load.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                      help="first wait up to SECONDS for the server to answer GET /metadata (a server starting up)")
    load.set_defaults(func=cmd_load_fhir)

    check = sub.add_parser("check", help="run a hook for a patient on a live FHIR server and print the cards")
    check.add_argument("--fhir", required=True, help="FHIR R4 base URL")
    check.add_argument("--patient", required=True, help="Patient id on that server")
    check.add_argument("--hook", default="patient-view", choices=["patient-view", "encounter-start",
                                                                    "order-select", "order-sign"])
    check.add_argument("--encounter", default=None, help="Encounter id (required for encounter-start)")
    check.add_argument("--token", default=None, help="bearer token for the FHIR server")
    check.add_argument("--config", default=None)
    check.set_defaults(func=cmd_check)

    valuesets = sub.add_parser("valuesets", help="list the value sets; --report: codes per system and their sources")
    valuesets.add_argument("names", nargs="*", help="value set ids (default: all)")
    valuesets.add_argument("--report", action="store_true", help="per concept, codes per code system and where from")
    valuesets.set_defaults(func=cmd_valuesets)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SettingsError as exc:
        print(f"lbp-redflags: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
