"""Which clinical notes and imaging/pathology reports are read, and their plain text.

Clinical notes are DocumentReferences; imaging and pathology reports are DiagnosticReports (their
conclusion and presentedForm) or DocumentReferences typed as such. Only text is read (text/plain,
text/html), inline or from a Binary on the patient's FHIR server; what cannot be read — a PDF, an
attachment on another server, a Binary that could not be fetched, notes beyond the caps — is named
in one line each for the card, never with any of the note's text.

The same selection decides which Binaries the fetch step reads (`binaries_to_fetch`) and which notes
are read (`read_notes`), so a Binary is fetched only for a note that will be read.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.message import Message
from urllib.parse import urlsplit

import lxml.etree
import lxml.html

from .dates import instant
from .record import PatientRecord

LOINC = "http://loinc.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
# DiagnosticReport categories read as text (and searched for): US Core radiology and pathology, and the
# v2 diagnostic service sections for radiology, pathology and surgical pathology. Not laboratory.
REPORT_CATEGORIES = ((LOINC, "LP29684-5"), (LOINC, "LP7839-6"), (V2_0074, "RAD"), (V2_0074, "PAT"), (V2_0074, "SP"))
# A DocumentReference is a report (not a clinical note) when typed or categorised as one.
REPORT_DOCUMENT_TYPES = {"18748-4", "11526-1", "18726-0"}   # diagnostic imaging, pathology, radiology studies
REPORT_DOCUMENT_CATEGORIES = {"LP29684-5", "LP7839-6"}
REPORT_STATUSES = {"final", "amended", "corrected", "appended"}
READABLE_TYPES = {"text/plain", "text/html", "application/xhtml+xml"}
MAX_TEXT_CHARS = 100_000        # of one note; the rest is not read and the card says so
MAX_HTML_BYTES = 2_000_000      # of markup decoded for one note: beyond it the text is read in part
KIND_WORDS = {"note": ("clinical notes", "note"), "report": ("imaging and pathology reports", "report")}
_SAFE_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_UNDATED = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Note:
    reference: str          # "DocumentReference/n1", "DiagnosticReport/r1"
    kind: str               # "note" (clinical notes) | "report" (imaging and pathology reports)
    title: str              # what a clinician calls it
    date: date | None
    text: str               # plain text, markup stripped
    preliminary: bool = False


@dataclass
class NotesRead:
    notes: list[Note]       # the notes to read, newest first, within the caps
    unread: list[str]       # one line each for the card, never any of a note's text


# ---------------------------------------------------------------------------- selection


@dataclass
class _Candidate:
    """A note that may be read: its identity, and where its text comes from."""

    reference: str
    kind: str
    title: str
    moment: datetime | None
    preliminary: bool
    conclusion: str = ""
    attachment: dict | None = None      # the attachment read: the first readable one
    binary_id: str | None = None        # the server Binary that attachment points at
    problem: str | None = None          # why no attachment can be read (a PDF, another server)

    @property
    def readable(self) -> bool:
        return bool(self.conclusion) or self.attachment is not None

    @property
    def label(self) -> str:
        return f"{self.title} ({self.moment.date().isoformat() if self.moment else 'undated'})"


@dataclass
class _Selection:
    chosen: list[_Candidate]            # read, newest first
    unreadable: list[_Candidate]        # newer than the last one read, but nothing in them can be read
    dropped: dict[str, int]             # per kind: left out by the cap
    crowded: dict[str, int]             # per kind: unreadable ones beyond those listed one by one


def _select(resources: list[dict], fhir_server: str | None, max_notes: int, max_reports: int) -> _Selection:
    """Eligible notes of each kind, newest first (undated last), the first `cap` readable ones chosen.

    A note whose content cannot be read at all (a PDF only) takes no place under the cap: unreadable
    scans must not crowd out notes that can be read. It is listed while it is newer than the last
    note read (at most `cap` of them; more are counted).
    """
    binaries = _binary_ids(resources)
    replaced = _replaced_documents(resources)
    candidates: dict[str, _Candidate] = {}   # by reference: a note both prefetched and fetched counts once
    for resource in resources:
        rtype = resource.get("resourceType")
        if _reference(resource) in candidates:
            continue
        if rtype == "DocumentReference" and _document_eligible(resource, replaced):
            candidates[_reference(resource)] = _document(resource, fhir_server, binaries)
        elif rtype == "DiagnosticReport" and _report_eligible(resource):
            candidates[_reference(resource)] = _report(resource, fhir_server, binaries)
    ordered = sorted(candidates.values(), key=lambda c: (c.moment is not None, c.moment or _UNDATED, c.reference),
                     reverse=True)
    caps = {"note": max_notes, "report": max_reports}
    selection = _Selection([], [], {"note": 0, "report": 0}, {"note": 0, "report": 0})
    chosen = {"note": 0, "report": 0}
    listed = {"note": 0, "report": 0}
    for candidate in ordered:
        kind = candidate.kind
        if chosen[kind] >= caps[kind]:
            selection.dropped[kind] += 1
        elif candidate.readable:
            selection.chosen.append(candidate)
            chosen[kind] += 1
        elif listed[kind] < caps[kind]:
            selection.unreadable.append(candidate)
            listed[kind] += 1
        else:
            selection.crowded[kind] += 1
    return selection


def _binary_ids(resources: list[dict]) -> set[str]:
    return {r["id"] for r in resources if r.get("resourceType") == "Binary" and isinstance(r.get("id"), str)}


def _codings(concept) -> list[dict]:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    return [c for c in codings if isinstance(c, dict)] if isinstance(codings, list) else []


def categories(resource: dict) -> set[tuple[str | None, str]]:
    """(system, code) of every coding of a resource's category (a list, as in DocumentReference and
    DiagnosticReport)."""
    return {(c.get("system") if isinstance(c.get("system"), str) else None, c["code"])
            for cat in _concepts(resource.get("category")) for c in _codings(cat) if isinstance(c.get("code"), str)}


def _concepts(value) -> list:
    return value if isinstance(value, list) else []


def _replaced_documents(resources: list[dict]) -> set[str]:
    """Ids of DocumentReferences another (not entered in error) DocumentReference says it replaces."""
    replaced = set()
    for resource in resources:
        if resource.get("resourceType") != "DocumentReference" or resource.get("status") == "entered-in-error":
            continue
        for relation in _concepts(resource.get("relatesTo")):
            if not isinstance(relation, dict) or relation.get("code") != "replaces":
                continue
            target = relation.get("target")
            ref = target.get("reference") if isinstance(target, dict) else None
            if isinstance(ref, str) and "DocumentReference/" in ref:
                replaced.add(ref.rsplit("DocumentReference/", 1)[1].split("/", 1)[0])
    return replaced


def _document_eligible(resource: dict, replaced: set[str]) -> bool:
    ident = resource.get("id")
    return (resource.get("status") == "current"
            and resource.get("docStatus", "final") in ("final", "amended")
            and not (isinstance(ident, str) and ident in replaced))


def _report_eligible(resource: dict) -> bool:
    status = resource.get("status")
    return (bool(categories(resource) & set(REPORT_CATEGORIES))
            and isinstance(status, str) and status in REPORT_STATUSES | {"preliminary"})


def _document_kind(resource: dict) -> str:
    types = {c.get("code") for c in _codings(resource.get("type"))
             if c.get("system") == LOINC and isinstance(c.get("code"), str)}
    loinc_categories = {code for system, code in categories(resource) if system == LOINC}
    return "report" if types & REPORT_DOCUMENT_TYPES or loinc_categories & REPORT_DOCUMENT_CATEGORIES else "note"


def _title(*texts, fallback: str) -> str:
    for text in texts:
        if isinstance(text, str) and text.strip():
            return " ".join(text.split())[:120]
    return fallback


def _concept_texts(concept) -> list:
    return [concept.get("text") if isinstance(concept, dict) else None,
            *(c.get("display") for c in _codings(concept))]


def _reference(resource: dict) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def _document(resource: dict, fhir_server: str | None, binaries: set) -> _Candidate:
    kind = _document_kind(resource)
    context = resource.get("context") if isinstance(resource.get("context"), dict) else {}
    period = context.get("period") if isinstance(context.get("period"), dict) else {}
    candidate = _Candidate(
        _reference(resource), kind,
        _title(*_concept_texts(resource.get("type")), resource.get("description"),
               fallback="Clinical note" if kind == "note" else "Report"),
        instant(resource.get("date")) or instant(period.get("start")), preliminary=False)
    content = [c.get("attachment") for c in _concepts(resource.get("content")) if isinstance(c, dict)]
    _choose_attachment(candidate, [a for a in content if isinstance(a, dict)], fhir_server, binaries)
    return candidate


def _report(resource: dict, fhir_server: str | None, binaries: set) -> _Candidate:
    period = resource.get("effectivePeriod") if isinstance(resource.get("effectivePeriod"), dict) else {}
    conclusion = resource.get("conclusion")
    candidate = _Candidate(
        _reference(resource), "report", _title(*_concept_texts(resource.get("code")), fallback="Report"),
        instant(resource.get("effectiveDateTime")) or instant(period.get("start"))
        or instant(resource.get("issued")),
        preliminary=resource.get("status") == "preliminary",
        conclusion=conclusion.strip() if isinstance(conclusion, str) else "")
    forms = [a for a in _concepts(resource.get("presentedForm")) if isinstance(a, dict)]
    _choose_attachment(candidate, forms, fhir_server, binaries)
    return candidate


def _choose_attachment(candidate: _Candidate, attachments: list[dict], fhir_server: str | None,
                       binaries: set) -> None:
    """The first attachment in a readable format that is inline or on the FHIR server; else why none is."""
    format_problem = location_problem = None
    for attachment in attachments:
        media_type = _media_type(attachment.get("contentType"))
        if media_type not in READABLE_TYPES:
            format_problem = format_problem or f"only {_format_name(media_type)}, not read"
            continue
        if isinstance(attachment.get("data"), str) and attachment["data"]:
            candidate.attachment = attachment
            return
        url = attachment.get("url")
        ident = binary_id(url, fhir_server)
        if ident and (fhir_server or ident in binaries):
            candidate.attachment, candidate.binary_id = attachment, ident
            return
        if not isinstance(url, str) or not url:
            location_problem = location_problem or "attachment has no content, not read"
        elif "://" in url and not ident:
            location_problem = location_problem or "attachment on another server, not fetched"
        elif ident:
            location_problem = location_problem or "attachment not fetched (no FHIR server to fetch it from)"
        else:
            location_problem = location_problem or "attachment is not a Binary on the FHIR server, not fetched"
    candidate.problem = location_problem or format_problem or ("no text to read" if not candidate.conclusion
                                                                else None)


def _format_name(media_type: str | None) -> str:
    if media_type is None:
        return "an attachment of unstated format"
    if media_type == "application/pdf":
        return "a PDF"
    if media_type.startswith("image/"):
        return f"an image ({media_type})"
    return f"a {media_type} attachment"


def binary_id(url, fhir_server: str | None) -> str | None:
    """The id of the Binary an attachment URL points at on the patient's FHIR server ("Binary/5", or
    absolute under fhir_server); None for anything else, another server's URL above all."""
    if not isinstance(url, str):
        return None
    url = url.strip()
    if "://" in url:
        if not fhir_server or not _under(url, fhir_server):
            return None
        url = urlsplit(url).path[len(urlsplit(fhir_server).path.rstrip("/")) + 1:]
    kind, _, ident = url.lstrip("/").partition("/")
    return ident if kind == "Binary" and _SAFE_ID.match(ident) else None


def _under(url: str, base: str) -> bool:
    """url is on base's server (scheme, host, port) and under its path."""
    try:
        a, b = urlsplit(url), urlsplit(base)
        ports = (a.port or {"https": 443, "http": 80}.get(a.scheme.lower()),
                 b.port or {"https": 443, "http": 80}.get(b.scheme.lower()))
    except ValueError:
        return False
    same = (a.scheme.lower(), (a.hostname or "").lower(), ports[0]) == (b.scheme.lower(), (b.hostname or "").lower(),
                                                                        ports[1])
    return same and not a.query and a.path.startswith(b.path.rstrip("/") + "/")


def binaries_to_fetch(resources: list[dict], fhir_server: str, max_notes: int, max_reports: int) -> list[str]:
    """Ids of the server Binaries the notes that will be read need, newest note first; none already held."""
    have = _binary_ids(resources)
    wanted: list[str] = []
    for candidate in _select(resources, fhir_server, max_notes, max_reports).chosen:
        if candidate.binary_id and candidate.binary_id not in have and candidate.binary_id not in wanted:
            wanted.append(candidate.binary_id)
    return wanted


def filled_kinds(resources: list[dict], fhir_server: str | None, max_notes: int, max_reports: int) -> set[str]:
    """The kinds ("note", "report") of which these resources already hold as many readable ones as are read."""
    selection = _select(resources, fhir_server, max_notes, max_reports)
    caps = {"note": max_notes, "report": max_reports}
    return {kind for kind, cap in caps.items() if sum(c.kind == kind for c in selection.chosen) >= cap}


# ---------------------------------------------------------------------------- reading


def read_notes(record: PatientRecord) -> NotesRead:
    """The notes and reports to read (newest first, within record.max_notes / max_reports), their text,
    and a line for each one that could not be read."""
    resources = [r for rtype in ("DocumentReference", "DiagnosticReport", "Binary") for r in record.of_type(rtype)]
    selection = _select(resources, record.fhir_server, record.max_notes, record.max_reports)
    binaries = {r["id"]: r for r in record.of_type("Binary") if isinstance(r.get("id"), str)}
    notes: list[Note] = []
    unread: list[str] = []
    for candidate in selection.unreadable:
        unread.append(f"{candidate.label}: {candidate.problem}")
    for candidate in selection.chosen:
        text, problem = "", None
        if candidate.attachment is not None:
            text, problem = _attachment_text(candidate, binaries, record)
        parts = [p for p in (candidate.conclusion, text) if p]
        if problem and candidate.conclusion:
            problem = f"{problem}; its conclusion was read"
        elif candidate.problem and candidate.conclusion:
            problem = f"{candidate.problem}; its conclusion was read"
        full = "\n\n".join(parts)
        if len(full) > MAX_TEXT_CHARS:
            full = full[:MAX_TEXT_CHARS]
            problem = problem or f"read in part (first {MAX_TEXT_CHARS:,} characters)"
        if problem:
            unread.append(f"{candidate.label}: {problem}")
        if full.strip():
            notes.append(Note(candidate.reference, candidate.kind, candidate.title,
                              candidate.moment.date() if candidate.moment else None, full, candidate.preliminary))
    for kind, (words, noun) in KIND_WORDS.items():
        cap = record.max_notes if kind == "note" else record.max_reports
        if selection.dropped[kind]:
            count = selection.dropped[kind]
            unread.append(f"{words}: {count} older {noun}{'s' if count != 1 else ''} not read (limit {cap})")
        if selection.crowded[kind]:
            count = selection.crowded[kind]
            unread.append(f"{words}: {count} more {noun}{'s' if count != 1 else ''} in a form that is not read "
                          "(PDF, images, attachments elsewhere)")
    return NotesRead(notes, unread)


def _attachment_text(candidate: _Candidate, binaries: dict[str, dict], record: PatientRecord) -> tuple[str, str | None]:
    """(text, why it is missing or partial) of the candidate's chosen attachment."""
    attachment = candidate.attachment or {}
    content_type = attachment.get("contentType")
    data = attachment.get("data")
    if not (isinstance(data, str) and data):
        binary = binaries.get(candidate.binary_id)
        if binary is None:
            reason = record.binary_errors.get(candidate.binary_id or "") or "not in the record"
            return "", f"attachment could not be fetched ({reason})"
        data = binary.get("data")
        if not isinstance(data, str) or not data:
            return "", "attachment is empty, not read"
        if _charset(content_type) is None and _charset(binary.get("contentType")):
            content_type = f"{_media_type(content_type)}; charset={_charset(binary.get('contentType'))}"
    return decode_attachment(data, content_type)


def decode_attachment(data: str, content_type) -> tuple[str, str | None]:
    """Plain text of base64 `data` of a text/plain or text/html attachment, and why it is partial or
    missing (None when whole)."""
    media_type = _media_type(content_type)
    limit = MAX_HTML_BYTES if media_type != "text/plain" else MAX_TEXT_CHARS * 4
    compact = "".join(data.split())
    cut = len(compact) > (limit + 2) // 3 * 4
    try:
        raw = base64.b64decode(compact[:(limit + 2) // 3 * 4] if cut else compact, validate=True)
    except (binascii.Error, ValueError):
        return "", "attachment could not be decoded (invalid base64), not read"
    charset = _charset(content_type) or "utf-8"
    try:
        text = raw.decode(charset, errors="replace")
    except (LookupError, ValueError):
        text = raw.decode("utf-8", errors="replace")
    text = html_text(text) if media_type != "text/plain" else text.replace("\r\n", "\n").replace("\r", "\n")
    return text, f"read in part (first {MAX_TEXT_CHARS:,} characters)" if cut else None


def _parsed_type(content_type) -> Message | None:
    if not isinstance(content_type, str) or not content_type.strip():
        return None
    message = Message()
    message["content-type"] = content_type
    return message


def _media_type(content_type) -> str | None:
    """"text/html" of "text/html; charset=UTF-8"; None when not stated. (Not email's get_content_type,
    which reads a malformed type as text/plain: a PDF must never be read as text.)"""
    if not isinstance(content_type, str) or not content_type.split(";", 1)[0].strip():
        return None
    return content_type.split(";", 1)[0].strip().lower()


def _charset(content_type) -> str | None:
    message = _parsed_type(content_type)
    charset = message.get_param("charset") if message is not None else None
    return charset.strip() if isinstance(charset, str) and charset.strip() else None


# ---------------------------------------------------------------------------- markup


# Elements whose start and end are line breaks (the sentence splitter then sees a list item, a table row
# or a heading on its own), table cells (a space), and elements whose text is not the note's.
BLOCK_ELEMENTS = frozenset({"p", "br", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "table",
                            "section", "article", "header", "footer", "blockquote", "pre", "dt", "dd", "hr",
                            "caption", "title", "body"})
VOID_ELEMENTS = frozenset({"br", "hr"})   # one line break, not two
CELL_ELEMENTS = frozenset({"td", "th"})
DROPPED_ELEMENTS = frozenset({"script", "style", "head", "template"})
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")


def _flowed(text: str) -> str:
    """A line break in markup is a space (runs of spaces are collapsed line by line afterwards)."""
    return text.replace("\r", " ").replace("\n", " ")


def html_text(markup: str) -> str:
    """Plain text of HTML or XHTML markup, one line per block, blank lines collapsed.

    Parsed by lxml (libxml2's HTML parser, forgiving of broken markup, about ten times faster than
    the standard library's parser on a note); line breaks in the markup are spaces except in <pre>.
    """
    if markup.lstrip()[:5] == "<?xml":   # lxml refuses a str with an encoding declaration
        markup = _XML_DECLARATION.sub("", markup, count=1)
    if not markup.strip():
        return ""
    try:
        root = lxml.html.document_fromstring(markup)
    except (lxml.etree.ParserError, ValueError):
        return ""
    parts: list[str] = []
    dropped = preformatted = 0
    for event, element in lxml.etree.iterwalk(root, events=("start", "end", "comment", "pi")):
        if event in ("comment", "pi"):   # not text, but the text after it is
            if not dropped and element.tail:
                parts.append(element.tail if preformatted else _flowed(element.tail))
            continue
        tag = element.tag.rsplit("}", 1)[-1].lower() if isinstance(element.tag, str) else ""
        if event == "start":
            dropped += tag in DROPPED_ELEMENTS
            if dropped:
                continue
            preformatted += tag == "pre"
            parts.append("\n" if tag in BLOCK_ELEMENTS else " " if tag in CELL_ELEMENTS else "")
            if element.text:
                parts.append(element.text if preformatted else _flowed(element.text))
            continue
        if tag in DROPPED_ELEMENTS:
            dropped -= 1
        elif not dropped:
            parts.append("\n" if tag in BLOCK_ELEMENTS and tag not in VOID_ELEMENTS else "")
            preformatted -= tag == "pre"
        if not dropped and element.tail:
            parts.append(element.tail if preformatted else _flowed(element.tail))
    lines = (" ".join(line.split()) for line in "".join(parts).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
