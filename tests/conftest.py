"""Fixtures: the app and its test client (in-process), and the real service (gunicorn) on a free port."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import connect_guard as connect_guard_module
import pytest
import requests

from cds_service.app import create_app
from cds_service.settings import load_settings

FIXTURES = Path(__file__).parent / "fixtures"
SPEC = FIXTURES / "cds-hooks-spec"
ROOT = Path(__file__).parent.parent

pytest_plugins = ["fhir_fixtures"]


def fixture_json(relative: str):
    return json.loads((FIXTURES / relative).read_text(encoding="utf-8"))


def today():
    return datetime.now(UTC).date()


def patient_view_body(**changes) -> dict:
    """A minimal valid patient-view request (Patient p1, no conditions), with top-level keys replaced."""
    body = {"hook": "patient-view", "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
            "context": {"userId": "Practitioner/1", "patientId": "p1"},
            "prefetch": {"patient": {"resourceType": "Patient", "id": "p1"}, "conditions": None}}
    body.update(changes)
    return body


@pytest.fixture
def settings(tmp_path):
    return load_settings(env={}, database_url=f"sqlite:///{tmp_path / 'test.db'}")


@pytest.fixture
def app(settings):
    return create_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningService:
    """`lbp-redflags serve` (gunicorn) in a subprocess, reached over real sockets."""

    def __init__(self, tmp: Path, env: dict[str, str] | None = None):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"service-{self.port}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("LBP_")}
        full_env.update({"LBP_DATABASE_URL": f"sqlite:///{tmp / f'service-{self.port}.db'}", "LBP_WORKERS": "2"})
        # Tests of fetching, paging and errors must not race the 4 s production hook deadline on a busy
        # machine; the tests of that deadline set their own.
        full_env["LBP_HOOK_DEADLINE_SECONDS"] = "20"
        full_env.update(env or {})
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cds_service.cli", "serve", "--port", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=tmp,
        )
        deadline = time.monotonic() + 90  # start-up loads value sets and UCUM: slow on a busy shared machine
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited: {self.log()}")
            try:
                if requests.get(self.base_url + "/healthz", timeout=1).ok:
                    return
            except (requests.ConnectionError, requests.Timeout):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"service did not start: {self.log()}")

    def log(self) -> str:
        if not self._log.closed:  # closed once stopped (and when it failed to start)
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def post(self, service_id: str, body: dict, **kwargs) -> requests.Response:
        return requests.post(f"{self.base_url}/cds-services/{service_id}", json=body, timeout=60, **kwargs)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)  # a graceful stop; on a loaded machine it can take a while
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


@pytest.fixture(scope="session")
def service(tmp_path_factory):
    running = RunningService(tmp_path_factory.mktemp("service"))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def start_service(tmp_path_factory):
    """Factory for services with their own settings (e.g. short FHIR timeouts)."""
    started = []

    def start(**env: str) -> RunningService:
        running = RunningService(tmp_path_factory.mktemp("service"), {f"LBP_{k.upper()}": v for k, v in env.items()})
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


# ---------------------------------------------------------------------------- the connect guard

# In this process, and (through sitecustomize on PYTHONPATH) in every Python subprocess the tests start.
_GUARD_LOG = Path(tempfile.mkdtemp(prefix="connect-guard-")) / "blocked.log"
atexit.register(shutil.rmtree, _GUARD_LOG.parent, True)
os.environ[connect_guard_module.LOG_VARIABLE] = str(_GUARD_LOG)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(Path(__file__).parent / "subprocess_site")] + [p for p in [os.environ.get("PYTHONPATH")] if p])
_connect_guard = connect_guard_module.ConnectGuard(str(_GUARD_LOG)).install()


@pytest.fixture(autouse=True)
def connect_guard():
    """Fails the test if anything (here or in a service it started) tried to connect outside loopback."""
    _connect_guard.take()
    yield _connect_guard
    blocked = _connect_guard.take()
    if blocked:
        pytest.fail(f"connection(s) outside loopback attempted and blocked: {sorted(set(blocked))}")


class AppServer:
    """An app served in-process on a real loopback socket (werkzeug, threaded).

    For tests that must reach into the app while it serves (an injected clock, a seeded store).
    """

    def __init__(self, app):
        from werkzeug.serving import make_server

        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.base_url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve_app():
    """Factory: serve_app(app) -> AppServer; stopped after the test."""
    started = []

    def serve(app) -> AppServer:
        started.append(AppServer(app))
        return started[-1]

    yield serve
    for server in started:
        server.stop()


# ---------------------------------------------------------------- databases: SQLite and PostgreSQL

@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server for the session (Debian's binaries, installed by ./scripts/test)."""
    from postgres_server import PostgresServer, binaries

    if binaries() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: ./scripts/test installs it")
        pytest.skip("PostgreSQL is not installed: run ./scripts/test once to install it")
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A fresh, empty database of each kind the service supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("postgres").new_database()
