"""An EHR-like CDS Hooks client for tests that go through real sockets end to end.

    ehr = EhrClient(service.base_url, fhir_server.base_url)
    response = ehr.call("patient-view", {"userId": "Practitioner/1", "patientId": "p1"})

Like an EHR, it reads the service's discovery document over HTTP, resolves that service's own
prefetch templates against the FHIR server (one HTTP GET per template, with the context tokens
filled in), and POSTs the hook request. Searches come back as searchset Bundles, which go into the
prefetch unchanged: no next link is followed, an EHR passes the first page.

Options of `call` / `build_request`:
- prefetch="full": every template resolved; "none": no prefetch at all; a collection of keys: every
  template except those keys (partial prefetch; the keys are left out of the request, not null);
- fhir_server_in_request: send `fhirServer` (the FHIR base this client reads from) or not;
- token: when given, `fhirAuthorization` with every field CDS Hooks 2.0 requires.

`EhrClient(..., observation_needs_category=True)` behaves like EHRs (Epic among them) whose FHIR
layer refuses an Observation search by patient alone: such a template is not run and its key is left
out of the prefetch, as CDS Hooks lets a client do with a template it cannot fulfil.

The client's own FHIR reads (to build prefetch) carry no Authorization header: an EHR reads its
own data with its own credentials, and a test looking at the token must only see the service's.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection
from typing import Any

import requests

FHIR_JSON = "application/fhir+json"
DEFAULT_USER = "Practitioner/ehr-test-user"
_TOKEN = re.compile(r"\{\{\s*([A-Za-z][\w.]*)\s*\}\}")


class EhrClientError(RuntimeError):
    """The service's discovery document or a template is not what a CDS client can use."""


def fill_template(template: str, context: dict[str, Any]) -> str | None:
    """A prefetch template with its `{{context.X}}` tokens replaced; None when a token has no value.

    Only context tokens are understood (CDS Hooks 2.0); any other token is an error of the service.
    """
    unresolved = False

    def token_value(match: re.Match) -> str:
        nonlocal unresolved
        name = match.group(1)
        if not name.startswith("context."):
            raise EhrClientError(f"prefetch token {{{{{name}}}}} is not a context token")
        value = context.get(name.removeprefix("context."))
        if not isinstance(value, str) or not value:
            unresolved = True
            return ""
        return value

    query = _TOKEN.sub(token_value, template)
    return None if unresolved else query


def _is_resource(body: Any) -> bool:
    return isinstance(body, dict) and isinstance(body.get("resourceType"), str)


class EhrClient:
    def __init__(self, service_base_url: str, fhir_base_url: str, *, user_id: str = DEFAULT_USER,
                 timeout: float = 60.0, observation_needs_category: bool = False):
        self.observation_needs_category = observation_needs_category
        self.service_base_url = service_base_url.rstrip("/")
        self.fhir_base_url = fhir_base_url.rstrip("/") + "/"
        self.user_id = user_id
        self.timeout = timeout
        self._session = requests.Session()
        self._discovery: dict | None = None

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> EhrClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ discovery

    def discovery(self) -> dict:
        """GET {service}/cds-services (once; the answer is kept)."""
        if self._discovery is None:
            response = self._session.get(f"{self.service_base_url}/cds-services",
                                         headers={"Accept": "application/json"}, timeout=self.timeout)
            response.raise_for_status()
            body = response.json()
            if not isinstance(body, dict) or not isinstance(body.get("services"), list):
                raise EhrClientError(f"not a CDS Hooks discovery document: {response.text[:300]}")
            self._discovery = body
        return self._discovery

    def service_for(self, hook: str) -> dict:
        """The one discovery entry answering `hook`."""
        matching = [s for s in self.discovery()["services"] if s.get("hook") == hook]
        if len(matching) != 1:
            raise EhrClientError(f"expected one service for hook {hook!r}, discovery lists {len(matching)}")
        return matching[0]

    # ------------------------------------------------------------------ prefetch

    def read(self, query: str) -> requests.Response:
        """GET a relative FHIR query at the FHIR base (as the EHR's own FHIR access would)."""
        return self._session.get(self.fhir_base_url + query.lstrip("/"), headers={"Accept": FHIR_JSON},
                                 timeout=self.timeout)

    def prefetch_slot(self, query: str) -> tuple[bool, dict | None]:
        """(include the key?, its value) for one resolved template.

        A resource (a searchset Bundle for searches) goes in unchanged; a read that finds nothing
        (404) is null; another failure that came with a FHIR body (an OperationOutcome) goes in as
        that body, so the service learns what went wrong; anything else leaves the key out.
        """
        response = self.read(query)
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.ok and _is_resource(body):
            return True, body
        is_read = "?" not in query
        if response.status_code == 404 and is_read:
            return True, None
        if _is_resource(body) and body["resourceType"] == "OperationOutcome":
            return True, body
        return False, None

    def can_run(self, query: str) -> bool:
        """Whether this EHR's FHIR layer runs a query (see observation_needs_category)."""
        path, _, params = query.partition("?")
        if not (self.observation_needs_category and path == "Observation"):
            return True
        names = {pair.split("=", 1)[0] for pair in params.split("&")}
        return bool(names & {"category", "code", "_id"})

    def prefetch(self, service: dict, context: dict[str, Any], *, omit: Collection[str] = ()) -> dict:
        """Resolve the service's prefetch templates; keys whose tokens cannot be filled, or whose query
        this EHR does not run, are left out."""
        out: dict[str, dict | None] = {}
        for key, template in (service.get("prefetch") or {}).items():
            if key in omit:
                continue
            query = fill_template(template, context)
            if query is None or not self.can_run(query):
                continue
            include, value = self.prefetch_slot(query)
            if include:
                out[key] = value
        return out

    # ------------------------------------------------------------------ the hook call

    def authorization(self, service: dict, token: str, context: dict[str, Any]) -> dict:
        """fhirAuthorization with every required field (access_token, token_type, expires_in, scope,
        subject), scoped to read the resource types the service's templates name, those they
        `_include` (MedicationRequest:medication needs Medication), and Binary where notes are
        searched (their text may be kept as a Binary the service reads by id)."""
        types = []
        for template in (service.get("prefetch") or {}).values():
            path, _, params = template.partition("?")
            named = [path.split("/", 1)[0]]
            named += ["Medication" for pair in params.split("&")
                      if pair.startswith("_include=") and pair.endswith(":medication")]
            named += ["Binary"] if named[0] in ("DocumentReference", "DiagnosticReport") else []
            types += [t for t in named if t not in types]
        auth = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": " ".join(f"patient/{t}.read" for t in types),
            "subject": service["id"],
        }
        if isinstance(context.get("patientId"), str):
            auth["patient"] = context["patientId"]
        return auth

    def build_request(self, hook: str, context: dict[str, Any], *,
                      prefetch: str | Collection[str] = "full", fhir_server_in_request: bool = True,
                      token: str | None = None, hook_instance: str | None = None) -> tuple[str, dict]:
        """(service id, request body) for a hook call; nothing is sent to the service yet."""
        service = self.service_for(hook)
        context = {"userId": self.user_id, **context}
        body: dict[str, Any] = {"hook": hook, "hookInstance": hook_instance or str(uuid.uuid4())}
        if fhir_server_in_request:
            body["fhirServer"] = self.fhir_base_url.rstrip("/")
        if token is not None:
            body["fhirAuthorization"] = self.authorization(service, token, context)
        body["context"] = context
        if prefetch == "full":
            body["prefetch"] = self.prefetch(service, context)
        elif prefetch != "none":
            if isinstance(prefetch, str):
                raise ValueError(f"prefetch must be 'full', 'none' or a collection of keys, not {prefetch!r}")
            unknown = set(prefetch) - set(service.get("prefetch") or {})
            if unknown:
                raise ValueError(f"not prefetch keys of {service['id']}: {sorted(unknown)}")
            body["prefetch"] = self.prefetch(service, context, omit=prefetch)
        return service["id"], body

    def post(self, service_id: str, body: dict) -> requests.Response:
        return self._session.post(f"{self.service_base_url}/cds-services/{service_id}", json=body,
                                  timeout=self.timeout)

    def call(self, hook: str, context: dict[str, Any], **options: Any) -> requests.Response:
        """build_request + post; options as for build_request."""
        return self.post(*self.build_request(hook, context, **options))
