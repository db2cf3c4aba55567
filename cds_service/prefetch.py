"""Prefetch semantics of CDS Hooks 2.0, and the FHIR fallback for what prefetch did not provide.

A key that is absent was not provided (fetch it); a key present with null means "no data";
an OperationOutcome in a slot is an error for that key (fetched again when a fhirServer is given);
a searchset Bundle may be paginated (its next pages are fetched when a fhirServer is given).
In a second round, Medications a request, statement or administration refers to and that no search
included, and the Binaries holding the text of the notes that will be read, are read one by one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from fhir_mappings.notes import REPORT_CATEGORIES, binaries_to_fetch, categories, filled_kinds
from fhir_mappings.record import subject_id

from .errors import ServiceError
from .fhir_client import under_base
from .services import (
    KEY_DESCRIPTIONS,
    LEGACY_TEMPLATES,
    NOTES_KEY,
    REPORTS_KEY,
    REQUIRED_KEYS,
    UNCATEGORISED_KEY,
    fetch_queries,
    observation_keys,
    prefetch_templates,
)


@dataclass
class Gathered:
    resources: list[dict] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)  # for the card: what could not be checked
    sources: dict[str, str] = field(default_factory=dict)  # key -> "prefetch" | "fetched" | "null"
    binary_errors: dict[str, str] = field(default_factory=dict)  # Binary id -> why it could not be read


def _operation_outcome_text(outcome: dict) -> str:
    texts = []
    for issue in _list(outcome.get("issue")):
        if isinstance(issue, dict):
            details = issue.get("details") if isinstance(issue.get("details"), dict) else {}
            text = issue.get("diagnostics") or details.get("text") or issue.get("code")
            if isinstance(text, str):
                texts.append(text[:200])
    return "; ".join(texts) or "OperationOutcome without details"


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _entries(bundle: dict) -> tuple[list[dict], int]:
    """The resources of a searchset Bundle, and how many entries were unreadable (not resources)."""
    out, unreadable = [], 0
    for entry in _list(bundle.get("entry")):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            unreadable += 1
            continue
        mode = entry["search"].get("mode") if isinstance(entry.get("search"), dict) else None
        if mode == "outcome" or resource["resourceType"] == "OperationOutcome":
            continue
        out.append(resource)
    return out, unreadable


def _next_link(bundle: dict) -> str | None:
    for link in _list(bundle.get("link")):
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


@dataclass
class _Slot:
    key: str
    status: str  # "ok" | "null" | "absent" | "error" | "paged"
    resources: list[dict] = field(default_factory=list)
    error: str | None = None
    next_url: str | None = None
    unreadable: int = 0


def _read_slot(key: str, value, expected_type: str, present: bool) -> _Slot:
    if not present:
        return _Slot(key, "absent")
    if value is None:
        return _Slot(key, "null")
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        return _Slot(key, "error", error="prefetch value is not a FHIR resource")
    rtype = value["resourceType"]
    if rtype == "OperationOutcome":
        return _Slot(key, "error", error=_operation_outcome_text(value))
    if rtype == "Bundle":
        if "entry" in value and not isinstance(value["entry"], list):
            return _Slot(key, "error", error="malformed Bundle: entry is not a list")
        resources, unreadable = _entries(value)
        next_url = _next_link(value)
        return _Slot(key, "paged" if next_url else "ok", resources, next_url=next_url, unreadable=unreadable)
    if rtype != expected_type:
        return _Slot(key, "error", error=f"expected {expected_type}, got {rtype}")
    return _Slot(key, "ok", [value])


def _expected_type(template: str) -> str:
    return template.split("?", 1)[0].split("/", 1)[0]


def gather(body: dict, fetcher=None, today: date | None = None, *, max_notes: int = 20,
           max_reports: int = 10) -> Gathered:
    """Collect the patient's resources from prefetch, fetching what is missing.

    fetcher(base_url, queries: dict[key, query], token) -> dict[key, FetchResult]; None when the
    service cannot fetch (no fhirServer). Fetch mode sends the same searches as the prefetch
    templates, with date=ge for recent-only data (``today`` is the day of the request). Medications
    referenced but not included, and the Binaries of the notes that will be read (at most
    ``max_notes`` clinical notes and ``max_reports`` reports), are read in a second round with the
    same fetcher. Raises ServiceError(412) when required data is unavailable.
    """
    today = today or datetime.now(UTC).date()
    context = body.get("context") or {}
    prefetch = body.get("prefetch") or {}
    fhir_server = body.get("fhirServer")
    token = (body.get("fhirAuthorization") or {}).get("access_token")
    gathered = Gathered()
    to_fetch: dict[str, str] = {}  # fetcher key -> query; a key cut into date slices has one per slice
    parts: dict[str, list[str]] = {}  # prefetch key -> its fetcher keys
    failures: dict[str, str] = {}
    usable: dict[str, int] = {}  # per key: resources read
    unreadable_only: dict[str, bool] = {}  # per key: entries came that could not be read

    for key, template in prefetch_templates().items():
        slot = _read_slot(key, prefetch.get(key), _expected_type(template), key in prefetch)
        if slot.status in ("ok", "paged"):
            gathered.resources.extend(slot.resources)
            gathered.sources[key] = "prefetch"
            usable[key] = len(slot.resources)
            unreadable_only[key] = bool(slot.unreadable)
            if slot.unreadable:
                failures[key] = f"{slot.unreadable} unreadable entr{'y' if slot.unreadable == 1 else 'ies'} skipped"
        if slot.status == "null":
            gathered.sources[key] = "null"
        if slot.status == "paged" and _enough_notes(key, slot.resources, fhir_server, max_notes, max_reports):
            pass   # newest first: the later pages hold only notes older than the caps would read
        elif slot.status == "paged":
            if fhir_server and slot.next_url and under_base(slot.next_url, fhir_server):
                to_fetch[key] = slot.next_url  # the client fetches it and the pages after it
                parts[key] = [key]
            else:
                failures[key] = "only the first page of results was provided"
        elif slot.status in ("absent", "error"):
            queries = fetch_queries(key, template, context, today)
            if fhir_server and queries:
                parts[key] = [key] if len(queries) == 1 else [f"{key} {i + 1}/{len(queries)}"
                                                               for i in range(len(queries))]
                to_fetch.update(zip(parts[key], queries, strict=True))
            else:
                failures[key] = slot.error or "not provided in prefetch and no fhirServer to fetch it from"

    for key, template in LEGACY_TEMPLATES.items():
        # An EHR configured from an earlier discovery document still sends these keys: read what they hold.
        slot = _read_slot(key, prefetch.get(key), _expected_type(template), key in prefetch)
        if slot.status in ("ok", "paged") and key not in prefetch_templates():
            gathered.resources.extend(slot.resources)
            gathered.sources[key] = "prefetch"

    if to_fetch and fetcher is not None:
        results = fetcher(fhir_server, to_fetch, token)
        for key, fetched_as in parts.items():
            for part in fetched_as:
                result = results.get(part)
                if result is None or not result.ok:
                    failures.setdefault(key, _fetch_failure(key, result))
                    continue
                resource = result.resource or {}
                if resource.get("resourceType") == "Bundle":
                    entries, unreadable = _entries(resource)
                    gathered.resources.extend(entries)
                    usable[key] = usable.get(key, 0) + len(entries)
                    unreadable_only[key] = unreadable_only.get(key, False) or bool(unreadable)
                    if unreadable:
                        failures[key] = f"{unreadable} unreadable entr{'y' if unreadable == 1 else 'ies'} skipped"
                    if getattr(result, "truncated", False):
                        failures[key] = "only part of the results could be fetched (page limit)"
                else:
                    gathered.resources.append(resource)
                gathered.sources.setdefault(key, "fetched")
    elif to_fetch:
        for key in parts:
            failures.setdefault(key, "fetching from the FHIR server is not available")

    # Required data that came but could not be read at all is as missing as data that never came.
    required_missing = [k for k in REQUIRED_KEYS if k in failures
                        and (k not in gathered.sources or (unreadable_only.get(k) and not usable.get(k)))]
    if required_missing:
        raise ServiceError(
            412,
            "required data is unavailable: the service needs the Patient and its Conditions to decide "
            "whether the patient has low back pain",
            [{"field": f"prefetch.{k}", "reason": failures[k]} for k in required_missing],
        )
    for key, reason in failures.items():
        gathered.unavailable.append(f"{KEY_DESCRIPTIONS.get(key, key)}: {reason}")
    if not any(r.get("resourceType") == "Patient" for r in gathered.resources):
        raise ServiceError(412, "required data is unavailable: no Patient resource",
                           [{"field": "prefetch.patient", "reason": "no Patient resource"}])
    if fhir_server and fetcher is not None:
        _second_round(gathered, fhir_server, token, fetcher, max_notes, max_reports, context.get("patientId"))
    return gathered


def _enough_notes(key: str, resources: list[dict], fhir_server: str | None, max_notes: int, max_reports: int) -> bool:
    """A first page of notes (or reports) already holds as many readable ones as are read: its next
    pages need not be fetched."""
    kind = {NOTES_KEY: "note", REPORTS_KEY: "report"}.get(key)
    return kind is not None and kind in filled_kinds(resources, fhir_server, max_notes, max_reports)


def _fetch_failure(key: str, result) -> str:
    reason = (result.error if result else None) or "could not be fetched"
    if key == UNCATEGORISED_KEY and result is not None and result.status in (400, 403):
        return f"not checked: the FHIR server does not allow a search without category ({reason})"
    return reason


MEDICATION_HOLDERS = ("MedicationRequest", "MedicationStatement", "MedicationAdministration")
MAX_MEDICATION_READS = 50  # a record referring to more Medications than this has the rest reported unread


def medication_id(reference, base_url: str | None = None) -> str | None:
    """The id of a server Medication a reference points at ("Medication/5", or absolute on base_url)."""
    if not isinstance(reference, str) or reference.startswith("#"):
        return None
    if "://" in reference:
        if not base_url or not under_base(reference, base_url):
            return None
        reference = reference[len(base_url.rstrip("/")) + 1:]
    kind, _, ident = reference.partition("/")
    return ident if kind == "Medication" and ident and "/" not in ident else None


MAX_BINARY_READS = 30  # attachments read per call; the notes whose Binary is left out are named unread


def _second_round(gathered: Gathered, fhir_server: str, token, fetcher, max_notes: int, max_reports: int,
                  patient_id: str | None) -> None:
    """Read, in one parallel round, the server Medications that requests, statements and administrations
    refer to and that their searches did not include, and the Binaries holding the text of the notes
    that will be read. A Medication that cannot be read is left out (the findings reader names the
    resource that refers to it as not read); a Binary that cannot be read is left out with the reason
    in ``binary_errors`` (the notes reader names the note as not read)."""
    queries = {f"medication {i}": f"Medication/{m}"
               for i, m in enumerate(_referenced_medications(gathered.resources, fhir_server))}
    # Notes about another patient are never read (PatientRecord leaves them out): their Binaries neither.
    own = [r for r in gathered.resources if subject_id(r) in (None, patient_id)]
    binaries = binaries_to_fetch(own, fhir_server, max_notes, max_reports)
    for ident in binaries[MAX_BINARY_READS:]:
        gathered.binary_errors[ident] = f"more than {MAX_BINARY_READS} attachments to fetch in one call"
    wanted = {f"binary {i}": ident for i, ident in enumerate(binaries[:MAX_BINARY_READS])}
    queries.update({key: f"Binary/{ident}" for key, ident in wanted.items()})
    if not queries:
        return
    results = fetcher(fhir_server, queries, token)
    for key in queries:
        result = results.get(key)
        expected = "Binary" if key in wanted else "Medication"
        if (result is not None and result.ok and isinstance(result.resource, dict)
                and result.resource.get("resourceType") == expected):
            gathered.resources.append(result.resource)
        elif key in wanted:
            gathered.binary_errors[wanted[key]] = (result.error if result is not None else None) or "not fetched"


def _referenced_medications(resources: list[dict], fhir_server: str) -> list[str]:
    """Ids of the server Medications referred to and not included (at most MAX_MEDICATION_READS)."""
    have = {r.get("id") for r in resources if r.get("resourceType") == "Medication"}
    wanted: list[str] = []
    for resource in resources:
        if resource.get("resourceType") not in MEDICATION_HOLDERS:
            continue
        ref = resource.get("medicationReference")
        ident = medication_id(ref.get("reference") if isinstance(ref, dict) else None, fhir_server)
        if ident and ident not in have and ident not in wanted and _SAFE_ID.match(ident):
            wanted.append(ident)
    return wanted[:MAX_MEDICATION_READS]


_SAFE_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")  # a FHIR id


def prefetch_for(resources: list[dict]) -> dict:
    """Prefetch as an EHR would fill our templates from a patient's resources (demo, tests, CLI).

    Observations go to the key of each of their categories, and every Observation to the search
    without category; Medications a request, statement or administration refers to are included
    in that key's Bundle (``_include``), as a server would. DocumentReferences in the clinical-note
    category and DiagnosticReports in a category the reports search names go to those keys, newest
    first; Binaries are never prefetched (no template can ask for them).
    """
    keys = {"Condition": "conditions", "Encounter": "encounters", "Procedure": "procedures",
            "MedicationRequest": "medications", "MedicationStatement": "medicationStatements",
            "MedicationAdministration": "medicationAdministrations"}
    category_keys = {category: key for key, category in observation_keys().items()}
    medications = {r.get("id"): r for r in resources if r.get("resourceType") == "Medication"}
    out: dict[str, dict | None] = {}
    bundles: dict[str, list[tuple[dict, str]]] = {k: [] for k in prefetch_templates() if k != "patient"}
    for resource in resources:
        rtype = resource.get("resourceType")
        if rtype == "Patient":
            out["patient"] = resource
        elif rtype in keys:
            bundles[keys[rtype]].append((resource, "match"))
            ref = resource.get("medicationReference")
            included = medications.get(medication_id(ref.get("reference") if isinstance(ref, dict) else None))
            if included is not None and (included, "include") not in bundles[keys[rtype]]:
                bundles[keys[rtype]].append((included, "include"))
        elif rtype == "ServiceRequest" and resource.get("status") == "active":
            bundles["activeServiceRequests"].append((resource, "match"))
        elif rtype == "Observation":
            for category in sorted({code for _, code in categories(resource)} & set(category_keys)):
                bundles[category_keys[category]].append((resource, "match"))
            bundles[UNCATEGORISED_KEY].append((resource, "match"))
        elif rtype == "DocumentReference" and "clinical-note" in {code for _, code in categories(resource)}:
            bundles[NOTES_KEY].append((resource, "match"))
        elif rtype == "DiagnosticReport" and categories(resource) & set(REPORT_CATEGORIES):
            bundles[REPORTS_KEY].append((resource, "match"))
    for key in (NOTES_KEY, REPORTS_KEY):   # _sort=-date
        bundles[key].sort(key=lambda item: _note_date(item[0]), reverse=True)
    for key, items in bundles.items():
        out[key] = {"resourceType": "Bundle", "type": "searchset",
                    "total": sum(1 for _, mode in items if mode == "match"),
                    "entry": [{"fullUrl": f"{r['resourceType']}/{r.get('id')}", "resource": r,
                               "search": {"mode": mode}} for r, mode in items]}
    return out


def _note_date(resource: dict) -> str:
    """What a server sorts a note search by (DocumentReference.date, DiagnosticReport.effective[x])."""
    period = resource.get("effectivePeriod") if isinstance(resource.get("effectivePeriod"), dict) else {}
    value = resource.get("date") or resource.get("effectiveDateTime") or period.get("start")
    return value if isinstance(value, str) else ""
