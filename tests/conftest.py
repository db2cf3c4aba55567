"""Fixtures: the app and its test client (in-process), and the real service (gunicorn) on a free port."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

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
        full_env.update(env or {})
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cds_service.cli", "serve", "--port", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=tmp,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited: {self.log()}")
            try:
                if requests.get(self.base_url + "/healthz", timeout=1).ok:
                    return
            except requests.ConnectionError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"service did not start: {self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def post(self, service_id: str, body: dict, **kwargs) -> requests.Response:
        return requests.post(f"{self.base_url}/cds-services/{service_id}", json=body, timeout=60, **kwargs)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
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

class ConnectGuard:
    """Refuses, in this test process, every socket connection outside loopback, and remembers it.

    Installed for the whole session (before any fixture runs), so that no test ever sends traffic to
    a private, link-local or public address, even when the code under test is wrong. Each test
    fails if something tried (`connect_guard` fixture); a test that expects an attempt (to see
    *which* address the code chose) takes it with `take()`. Only IP literals on 127.0.0.0/8 and ::1,
    the name "localhost" and Unix sockets pass: a host name would need DNS.
    """

    def __init__(self):
        self.attempts: list[str] = []
        self._lock = threading.Lock()
        self._connect = socket.socket.connect
        self._connect_ex = socket.socket.connect_ex

    @staticmethod
    def allowed(family: int, address) -> bool:
        if family == getattr(socket, "AF_UNIX", None):
            return True
        host = address[0] if isinstance(address, tuple) and address else address
        if not isinstance(host, str):
            return False
        if host == "localhost":
            return True
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        ip = getattr(ip, "ipv4_mapped", None) or ip
        return ip.is_loopback

    def _check(self, sock, address) -> None:
        if not self.allowed(sock.family, address):
            shown = address[0] if isinstance(address, tuple) else address
            with self._lock:
                self.attempts.append(str(shown))
            raise OSError(101, f"connection to {shown} blocked by the test connect guard")

    def install(self) -> None:
        guard = self

        def connect(sock, address):
            guard._check(sock, address)
            return guard._connect(sock, address)

        def connect_ex(sock, address):
            guard._check(sock, address)
            return guard._connect_ex(sock, address)

        socket.socket.connect = connect
        socket.socket.connect_ex = connect_ex

    def take(self) -> list[str]:
        """The blocked attempts so far (and forget them: the test expected them)."""
        with self._lock:
            taken, self.attempts = self.attempts, []
        return taken


_connect_guard = ConnectGuard()
_connect_guard.install()


@pytest.fixture(autouse=True)
def connect_guard():
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
