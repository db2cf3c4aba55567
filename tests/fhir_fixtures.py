"""pytest fixtures for tests that need a real FHIR R4 server on loopback.

Register them in tests/conftest.py (test modules may also name it; pytest loads it once):

    pytest_plugins = ["fhir_fixtures"]

`fhir_server` starts tests/fhir_server/server.mjs once per session (stopped at the end);
`fault_proxy` is a fresh FaultProxy in front of it for each test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fault_proxy import FaultProxy
from fhir_server_process import FhirServer, start_fhir_server


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[FhirServer]:
    server = start_fhir_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fault_proxy(fhir_server: FhirServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(fhir_server.base_url).start()
    try:
        yield proxy
    finally:
        proxy.stop()
