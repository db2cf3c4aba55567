"""Start and stop the in-memory FHIR R4 test server (tests/fhir_server/server.mjs) from Python.

    server = start_fhir_server()          # a free loopback port, waits until it answers
    server.load_transaction(bundle)       # POST a transaction Bundle; every entry must be 2xx
    requests.get(server.base_url + "Patient/p1")
    server.stop()

The server needs Node.js and its packages: `npm ci --prefix tests/fhir_server`.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

SERVER_DIR = Path(__file__).resolve().parent / "fhir_server"
SERVER_SCRIPT = SERVER_DIR / "server.mjs"
INSTALL_HINT = "run npm ci --prefix tests/fhir_server"
READY_LINE = re.compile(r"FHIR server listening on (http://\S+)")
FHIR_JSON = "application/fhir+json"


class FhirServerError(RuntimeError):
    """The test FHIR server could not be started, or refused data it was given."""


@functools.cache
def node_command() -> tuple[str, ...]:
    """`node` plus the flags this Node version needs for Medplum 5 (a global WebSocket)."""
    node = shutil.which("node")
    if node is None:
        raise FhirServerError("node is not on PATH: the test FHIR server needs Node.js 20.19 or later")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    match = re.match(r"v(\d+)\.(\d+)", version)
    if not match:
        raise FhirServerError(f"cannot tell the Node.js version from {version!r}")
    major, minor = int(match[1]), int(match[2])
    if (major, minor) < (20, 19):
        raise FhirServerError(f"Node.js {version} is too old for the test FHIR server (needs 20.19+)")
    return (node, "--experimental-websocket") if major < 22 else (node,)


def _entry_status(entry: dict[str, Any]) -> int | None:
    match = re.match(r"\s*(\d{3})", str((entry.get("response") or {}).get("status", "")))
    return int(match[1]) if match else None


@dataclass
class FhirServer:
    """A running server; `base_url` ends with `/` (http://127.0.0.1:<port>/fhir/R4/)."""

    process: subprocess.Popen
    base_url: str
    _stderr: deque = field(default_factory=lambda: deque(maxlen=200), repr=False)
    _session: requests.Session = field(default_factory=requests.Session, repr=False)

    @property
    def origin(self) -> str:
        """scheme://host:port, without the /fhir/R4 path."""
        return self.base_url.split("/fhir/", 1)[0]

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def load_transaction(self, bundle: dict[str, Any], timeout: float = 30.0) -> list[dict[str, Any]]:
        """POST a transaction (or batch) Bundle at the base; return each entry's `response`.

        Raises FhirServerError unless the Bundle was accepted and every entry's status is 2xx.
        """
        response = self._session.post(
            self.base_url,
            json=bundle,
            headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON},
            timeout=timeout,
        )
        try:
            body = response.json()
        except ValueError:
            body = None
        if not response.ok or not isinstance(body, dict) or body.get("resourceType") != "Bundle":
            raise FhirServerError(
                f"transaction rejected: HTTP {response.status_code}: {response.text[:2000]}"
            )
        entries = body.get("entry") or []
        failures = [
            f"entry {index}: status {(entry.get('response') or {}).get('status')!r} "
            f"{(entry.get('response') or {}).get('outcome')}"
            for index, entry in enumerate(entries)
            if not (status := _entry_status(entry)) or not 200 <= status < 300
        ]
        if failures:
            raise FhirServerError("transaction entries failed:\n" + "\n".join(failures))
        return [entry.get("response") or {} for entry in entries]

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the server, wait for it, and kill it if it does not exit in time."""
        self._session.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> FhirServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _drain(stream, sink: deque, ready: list, ready_event: threading.Event | None) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line)
        if ready_event is not None and not ready_event.is_set():
            match = READY_LINE.search(line)
            if match:
                ready.append(match[1])
                ready_event.set()
    if ready_event is not None:
        ready_event.set()  # the process closed stdout: wake the waiter


def start_fhir_server(port: int = 0, timeout: float = 60.0) -> FhirServer:
    """Spawn the server on 127.0.0.1 and wait (at most `timeout` s) until /healthz answers.

    port 0 lets the operating system pick a free port (no race between choosing and binding);
    the chosen one is read from the server's ready line.
    """
    if not (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        raise FhirServerError(f"the test FHIR server's packages are not installed: {INSTALL_HINT}")
    command = [*node_command(), str(SERVER_SCRIPT), "--port", str(port), "--host", "127.0.0.1"]
    process = subprocess.Popen(
        command,
        cwd=SERVER_DIR,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    stdout_lines: deque = deque(maxlen=200)
    stderr_lines: deque = deque(maxlen=200)
    ready: list[str] = []
    ready_event = threading.Event()
    threading.Thread(
        target=_drain, args=(process.stdout, stdout_lines, ready, ready_event), daemon=True
    ).start()
    threading.Thread(target=_drain, args=(process.stderr, stderr_lines, [], None), daemon=True).start()

    def give_up(reason: str) -> FhirServerError:
        if process.poll() is None:
            process.kill()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.05)  # let the reader threads collect the last lines
        stderr = "".join(stderr_lines).strip() or "(empty)"
        hint = f"\nIf packages are missing: {INSTALL_HINT}" if "npm ci" not in stderr else ""
        return FhirServerError(f"{reason}\ncommand: {' '.join(command)}\nstderr:\n{stderr}{hint}")

    deadline = time.monotonic() + timeout
    stdout_closed = ready_event.wait(timeout) and not ready
    if not ready:
        if stdout_closed:  # the process is ending: let it, to report its exit code
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        code = process.poll()
        raise give_up(
            f"the test FHIR server exited with code {code} before it was ready"
            if code is not None
            else f"the test FHIR server printed no ready line within {timeout:.0f} s"
        )
    server = FhirServer(process=process, base_url=ready[0], _stderr=stderr_lines)
    while True:
        try:
            if requests.get(server.origin + "/healthz", timeout=2).ok:
                return server
        except requests.RequestException:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise give_up("the test FHIR server does not answer /healthz")
        time.sleep(0.1)
