"""The test connect guard: no test ever sends traffic outside loopback, even when the code is wrong.

Installed in the test process by tests/conftest.py (before any fixture runs), and in every Python
subprocess the tests start (the gunicorn service, the CLI) through tests/subprocess_site/
sitecustomize.py, which conftest puts on PYTHONPATH. A blocked attempt raises OSError where it
was made (the code under test sees an unreachable address), and is recorded: in memory in the test
process, in the file named by TEST_CONNECT_GUARD_LOG for subprocesses. The autouse fixture
`connect_guard` fails the test that caused either.

Only IP literals on 127.0.0.0/8 and ::1, the name "localhost" and Unix sockets pass: any other host
name would need DNS. The one exception is the opt-in live test (LBP_TEST_LIVE_FHIR_URL set, only
in the subprocesses that test starts): public addresses pass there, private ones never.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading

LOG_VARIABLE = "TEST_CONNECT_GUARD_LOG"


def _address(host: str):
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    return getattr(ip, "ipv4_mapped", None) or ip


class ConnectGuard:
    def __init__(self, log_path: str | None = None, *, writes_log: bool = False, allow_public: bool = False):
        """log_path: where subprocesses record their attempts; writes_log: this is such a subprocess."""
        self.attempts: list[str] = []
        self.log_path = log_path
        self.writes_log = writes_log
        self.allow_public = allow_public
        self._lock = threading.Lock()
        self._connect = socket.socket.connect
        self._connect_ex = socket.socket.connect_ex

    def allowed(self, family: int, address) -> bool:
        if family == getattr(socket, "AF_UNIX", None):
            return True
        host = address[0] if isinstance(address, tuple) and address else address
        if not isinstance(host, str):
            return False
        if host == "localhost":
            return True
        ip = _address(host)
        if ip is None:
            return False
        return ip.is_loopback or (self.allow_public and ip.is_global and not ip.is_multicast)

    def _check(self, sock, address) -> None:
        if self.allowed(sock.family, address):
            return
        shown = str(address[0] if isinstance(address, tuple) else address)
        with self._lock:
            self.attempts.append(shown)
            if self.log_path and self.writes_log:
                with open(self.log_path, "a", encoding="utf-8") as log:
                    log.write(f"{os.getpid()} {shown}\n")
        raise OSError(101, f"connection to {shown} blocked by the test connect guard")

    def install(self) -> ConnectGuard:
        guard = self

        def connect(sock, address):
            guard._check(sock, address)
            return guard._connect(sock, address)

        def connect_ex(sock, address):
            guard._check(sock, address)
            return guard._connect_ex(sock, address)

        socket.socket.connect = connect
        socket.socket.connect_ex = connect_ex
        return self

    def take(self) -> list[str]:
        """The blocked attempts so far, in this process and its subprocesses (and forget them)."""
        with self._lock:
            taken, self.attempts = self.attempts, []
        if self.log_path and os.path.exists(self.log_path):
            with open(self.log_path, "r+", encoding="utf-8") as log:
                taken += [line.split(" ", 1)[1].strip() for line in log if " " in line]
                log.seek(0)
                log.truncate()
        return taken


def install_in_subprocess() -> None:
    log_path = os.environ.get(LOG_VARIABLE)
    if log_path:
        ConnectGuard(log_path, writes_log=True, allow_public=bool(os.environ.get("LBP_TEST_LIVE_FHIR_URL"))).install()
