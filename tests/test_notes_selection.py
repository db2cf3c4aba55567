"""Which clinical notes and imaging/pathology reports are read, and the plain text read from them."""

from __future__ import annotations

import base64

from fhir_mappings.notes import (
    MAX_TEXT_CHARS,
    binaries_to_fetch,
    binary_id,
    html_text,
    read_notes,
)
from fhir_mappings.record import PatientRecord

SERVER = "https://ehr.example.org/fhir/R4"
LOINC = "http://loinc.org"
V2 = "http://terminology.hl7.org/CodeSystem/v2-0074"
CLINICAL_NOTE = {"coding": [{"system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                             "code": "clinical-note"}]}


def b64(text: str, encoding: str = "utf-8") -> str:
    return base64.b64encode(text.encode(encoding)).decode("ascii")


def text_attachment(text: str, content_type: str = "text/plain") -> dict:
    return {"contentType": content_type, "data": b64(text)}


def document(ident: str, when: str | None = "2026-11-20T10:00:00Z", *attachments: dict, **fields) -> dict:
    resource = {"resourceType": "DocumentReference", "id": ident, "status": "current", "docStatus": "final",
                "subject": {"reference": "Patient/p1"}, "category": [CLINICAL_NOTE],
                "type": {"coding": [{"system": LOINC, "code": "11506-3", "display": "Progress note"}],
                         "text": "Progress note"},
                "content": [{"attachment": a} for a in (attachments or (text_attachment(f"text of {ident}"),))]}
    if when:
        resource["date"] = when
    resource.update(fields)
    return resource


def report(ident: str, when: str | None = "2026-11-21", *, conclusion: str | None = "No acute findings.",
           category: tuple[str, str] = (LOINC, "LP29684-5"), **fields) -> dict:
    resource = {"resourceType": "DiagnosticReport", "id": ident, "status": "final",
                "subject": {"reference": "Patient/p1"},
                "category": [{"coding": [{"system": category[0], "code": category[1]}]}],
                "code": {"coding": [{"system": LOINC, "code": "24534-0"}], "text": "MRI L-spine"}}
    if when:
        resource["effectiveDateTime"] = when
    if conclusion:
        resource["conclusion"] = conclusion
    resource.update(fields)
    return resource


def binary(ident: str, text: str, content_type: str = "text/plain") -> dict:
    return {"resourceType": "Binary", "id": ident, "contentType": content_type, "data": b64(text)}


def read(*resources: dict, **record_fields):
    return read_notes(PatientRecord.from_resources([{"resourceType": "Patient", "id": "p1"}, *resources],
                                                   patient_id="p1", **record_fields))


def references(result) -> list[str]:
    return [n.reference for n in result.notes]


# ---------------------------------------------------------------------------- DocumentReference status


def test_a_current_final_note_is_read_with_its_title_date_and_text():
    [note] = read(document("n1")).notes
    assert (note.reference, note.kind, note.title, note.date.isoformat(), note.text) == (
        "DocumentReference/n1", "note", "Progress note", "2026-11-20", "text of n1")
    assert note.preliminary is False


def test_a_superseded_note_is_not_read():
    assert read(document("n1", status="superseded")).notes == []


def test_a_note_entered_in_error_is_not_read():
    assert read(document("n1", status="entered-in-error")).notes == []


def test_a_preliminary_note_is_not_read():
    assert read(document("n1", docStatus="preliminary")).notes == []


def test_a_note_whose_doc_status_was_entered_in_error_is_not_read():
    assert read(document("n1", docStatus="entered-in-error")).notes == []


def test_an_amended_note_is_read():
    assert references(read(document("n1", docStatus="amended"))) == ["DocumentReference/n1"]


def test_a_note_without_doc_status_is_read():
    resource = document("n1")
    del resource["docStatus"]
    assert references(read(resource)) == ["DocumentReference/n1"]


def test_a_note_another_note_replaces_is_not_read():
    newer = document("n2", "2026-11-22T09:00:00Z",
                     relatesTo=[{"code": "replaces", "target": {"reference": "DocumentReference/n1"}}])
    assert references(read(document("n1"), newer)) == ["DocumentReference/n2"]


def test_a_note_is_dated_by_its_context_period_when_it_has_no_date():
    [note] = read(document("n1", None, context={"period": {"start": "2026-10-02T08:00:00Z"}})).notes
    assert note.date.isoformat() == "2026-10-02"


def test_a_note_without_a_type_is_called_by_its_description():
    resource = document("n1", description="ED visit note")
    del resource["type"]
    assert read(resource).notes[0].title == "ED visit note"


def test_a_note_without_type_or_description_is_a_clinical_note():
    resource = document("n1")
    del resource["type"]
    assert read(resource).notes[0].title == "Clinical note"


def test_a_document_typed_as_a_diagnostic_imaging_study_is_a_report():
    resource = document("n1", type={"coding": [{"system": LOINC, "code": "18748-4"}]})
    [note] = read(resource).notes
    assert (note.kind, note.title) == ("report", "Report")


def test_a_document_in_the_pathology_category_is_a_report():
    resource = document("n1", category=[{"coding": [{"system": LOINC, "code": "LP7839-6"}]}])
    assert read(resource).notes[0].kind == "report"


# ---------------------------------------------------------------------------- DiagnosticReport


def test_a_radiology_report_conclusion_is_read():
    [note] = read(report("r1", conclusion="Lytic lesion at L3, suspicious for metastasis.")).notes
    assert (note.reference, note.kind, note.title, note.date.isoformat()) == (
        "DiagnosticReport/r1", "report", "MRI L-spine", "2026-11-21")
    assert note.text == "Lytic lesion at L3, suspicious for metastasis."


def test_a_pathology_report_is_read():
    assert references(read(report("r1", category=(LOINC, "LP7839-6")))) == ["DiagnosticReport/r1"]


def test_a_report_in_the_v2_radiology_section_is_read():
    assert references(read(report("r1", category=(V2, "RAD")))) == ["DiagnosticReport/r1"]


def test_a_report_in_the_v2_surgical_pathology_section_is_read():
    assert references(read(report("r1", category=(V2, "SP")))) == ["DiagnosticReport/r1"]


def test_a_laboratory_report_is_not_read_as_text():
    assert read(report("r1", category=(V2, "LAB"))).notes == []


def test_conclusion_and_presented_form_are_read_joined_by_a_blank_line():
    resource = report("r1", conclusion="Impression: metastasis.",
                      presentedForm=[text_attachment("Findings: lytic lesion at L3.")])
    assert read(resource).notes[0].text == "Impression: metastasis.\n\nFindings: lytic lesion at L3."


def test_a_preliminary_report_is_read_and_marked_preliminary():
    [note] = read(report("r1", status="preliminary")).notes
    assert note.preliminary is True


def test_amended_corrected_and_appended_reports_are_read():
    resources = [report(f"r-{s}", status=s) for s in ("amended", "corrected", "appended")]
    assert len(read(*resources).notes) == 3


def test_registered_partial_cancelled_and_entered_in_error_reports_are_not_read():
    resources = [report(f"r-{s}", status=s) for s in ("registered", "partial", "cancelled", "entered-in-error")]
    assert read(*resources).notes == []


def test_a_report_is_dated_by_its_effective_period_start():
    resource = report("r1", None, effectivePeriod={"start": "2026-09-01T10:00:00+02:00"})
    assert read(resource).notes[0].date.isoformat() == "2026-09-01"


def test_a_report_without_effective_time_is_dated_by_issued():
    resource = report("r1", None, issued="2026-08-15T12:00:00Z")
    assert read(resource).notes[0].date.isoformat() == "2026-08-15"


# ---------------------------------------------------------------------------- attachments


def test_html_markup_is_stripped_with_block_elements_on_their_own_lines():
    markup = ("<html><head><style>p{color:red}</style></head><body><h1>HPI</h1><p>Pain at\n night.</p>"
              "<script>alert(1)</script><ul><li>No fever</li><li>Weight loss</li></ul>Plan<br>MRI</body></html>")
    assert html_text(markup) == "HPI\n\nPain at night.\n\nNo fever\n\nWeight loss\n\nPlan\nMRI"


def test_html_comments_are_dropped_and_the_text_after_them_kept():
    assert html_text("<div>Saddle anaesthesia: <!-- checklist item 4 --> No</div>") == "Saddle anaesthesia: No"


def test_xhtml_with_an_xml_declaration_is_read():
    markup = ('<?xml version="1.0" encoding="UTF-8"?><html xmlns="http://www.w3.org/1999/xhtml"><body>'
              "<h2>Impression</h2><p>Lytic lesion at L3.</p></body></html>")
    assert html_text(markup) == "Impression\n\nLytic lesion at L3."


def test_table_cells_are_separated_and_rows_are_lines():
    assert html_text("<table><tr><td>Weight loss</td><td>Yes</td></tr><tr><td>Fever</td><td>No</td></tr></table>") == (
        "Weight loss Yes\n\nFever No")


def test_empty_markup_is_empty_text():
    assert html_text("  ") == "" and html_text("<p></p>") == ""


def test_an_html_note_is_read_without_markup():
    resource = document("n1", "2026-11-20", text_attachment("<p>Saddle anaesthesia: <b>No</b></p>", "text/html"))
    assert read(resource).notes[0].text == "Saddle anaesthesia: No"


def test_an_xhtml_note_is_read_without_markup():
    resource = document("n1", "2026-11-20", text_attachment("<div>Night pain</div>", "application/xhtml+xml"))
    assert read(resource).notes[0].text == "Night pain"


def test_html_character_references_are_decoded():
    assert html_text("<p>T&gt;38&nbsp;&deg;C &amp; chills</p>") == "T>38 °C & chills"  # nbsp: a space


def test_the_charset_of_the_content_type_is_used():
    attachment = {"contentType": "text/plain; charset=ISO-8859-1", "data": b64("Anästhesie", "latin-1")}
    assert read(document("n1", "2026-11-20", attachment)).notes[0].text == "Anästhesie"


def test_undecodable_bytes_are_replaced_not_fatal():
    attachment = {"contentType": "text/plain", "data": base64.b64encode(b"night pain \xff\xfe").decode()}
    assert read(document("n1", "2026-11-20", attachment)).notes[0].text.startswith("night pain ")


def test_an_unknown_charset_is_read_as_utf8():
    attachment = {"contentType": "text/plain; charset=x-unknown", "data": b64("weight loss")}
    assert read(document("n1", "2026-11-20", attachment)).notes[0].text == "weight loss"


def test_invalid_base64_gives_an_unread_line():
    attachment = {"contentType": "text/plain", "data": "not base64 at all!!"}
    result = read(document("n1", "2026-11-20", attachment))
    assert result.notes == []
    assert result.unread == ["Progress note (2026-11-20): attachment could not be decoded (invalid base64), not read"]


def test_the_first_readable_attachment_is_read():
    resource = document("n1", "2026-11-20", {"contentType": "application/pdf", "data": b64("%PDF")},
                        text_attachment("first text"), text_attachment("second text"))
    assert read(resource).notes[0].text == "first text"


def test_a_note_only_in_pdf_gives_an_unread_line_naming_the_format():
    resource = document("n1", "2026-11-20", {"contentType": "application/pdf", "url": "Binary/b1"})
    result = read(resource, fhir_server=SERVER)
    assert result.notes == []
    assert result.unread == ["Progress note (2026-11-20): only a PDF, not read"]


def test_a_note_only_as_an_image_gives_an_unread_line_naming_the_image_type():
    resource = document("n1", "2026-11-20", {"contentType": "image/jpeg", "data": b64("jpeg")})
    assert read(resource).unread == ["Progress note (2026-11-20): only an image (image/jpeg), not read"]


def test_a_report_with_a_conclusion_and_only_a_pdf_says_the_pdf_was_not_read():
    resource = report("r1", presentedForm=[{"contentType": "application/pdf", "url": "Binary/b1"}])
    result = read(resource, fhir_server=SERVER)
    assert result.notes[0].text == "No acute findings."
    assert result.unread == ["MRI L-spine (2026-11-21): only a PDF, not read; its conclusion was read"]


def test_a_binary_by_relative_url_is_read_from_the_record():
    resource = document("n1", "2026-11-20", {"contentType": "text/plain", "url": "Binary/b1"})
    result = read(resource, binary("b1", "wife reports he is incontinent"), fhir_server=SERVER)
    assert result.notes[0].text == "wife reports he is incontinent"


def test_a_binary_by_absolute_url_on_the_fhir_server_is_read():
    resource = document("n1", "2026-11-20", {"contentType": "text/html", "url": f"{SERVER}/Binary/b1"})
    result = read(resource, binary("b1", "<p>h/o breast ca</p>", "text/html"), fhir_server=SERVER)
    assert result.notes[0].text == "h/o breast ca"


def test_the_charset_of_the_binary_is_used_when_the_attachment_gives_none():
    stored = {"resourceType": "Binary", "id": "b1", "contentType": "text/plain; charset=windows-1252",
              "data": b64("naïve", "windows-1252")}
    resource = document("n1", "2026-11-20", {"contentType": "text/plain", "url": "Binary/b1"})
    assert read(resource, stored, fhir_server=SERVER).notes[0].text == "naïve"


def test_a_binary_that_could_not_be_fetched_gives_an_unread_line_with_the_reason():
    resource = document("n1", "2026-11-28", {"contentType": "text/plain", "url": "Binary/b1"})
    result = read(resource, fhir_server=SERVER, binary_errors={"b1": "timed out"})
    assert result.notes == []
    assert result.unread == ["Progress note (2026-11-28): attachment could not be fetched (timed out)"]


def test_an_attachment_on_another_server_gives_an_unread_line():
    resource = document("n1", "2026-11-20", {"contentType": "text/plain", "url": "https://other.example/Binary/b1"})
    result = read(resource, fhir_server=SERVER)
    assert result.unread == ["Progress note (2026-11-20): attachment on another server, not fetched"]


def test_a_binary_url_without_a_fhir_server_gives_an_unread_line():
    resource = document("n1", "2026-11-20", {"contentType": "text/plain", "url": "Binary/b1"})
    assert read(resource).unread == [
        "Progress note (2026-11-20): attachment not fetched (no FHIR server to fetch it from)"]


def test_a_very_long_note_is_read_in_part():
    resource = document("n1", "2026-11-20", text_attachment("x" * (MAX_TEXT_CHARS + 10)))
    result = read(resource)
    assert len(result.notes[0].text) == MAX_TEXT_CHARS
    assert result.unread == ["Progress note (2026-11-20): read in part (first 100,000 characters)"]


def test_unread_lines_never_contain_note_text():
    resources = [document("n1", "2026-11-20", {"contentType": "text/plain", "data": "secret!!"}),
                 document("n2", "2026-11-19", text_attachment("SECRET-TEXT " * 10_000))]
    result = read(*resources, max_notes=1)
    assert result.unread and not any("secret" in line.lower() for line in result.unread)


# ---------------------------------------------------------------------------- ordering and caps


def test_notes_are_read_newest_first_with_undated_ones_last():
    resources = [document("old", "2025-01-01"), document("undated", None), document("new", "2026-11-29T08:00:00Z"),
                 document("mid", "2026-06-01")]
    assert references(read(*resources)) == [f"DocumentReference/{i}" for i in ("new", "mid", "old", "undated")]


def test_notes_beyond_the_cap_are_summarised_in_one_line():
    resources = [document(f"n{day:02d}", f"2026-11-{day:02d}") for day in range(1, 11)]
    result = read(*resources, max_notes=3)
    assert references(result) == ["DocumentReference/n10", "DocumentReference/n09", "DocumentReference/n08"]
    assert result.unread == ["clinical notes: 7 older notes not read (limit 3)"]


def test_reports_have_their_own_cap_so_notes_never_crowd_them_out():
    resources = [*(document(f"n{day:02d}", f"2026-11-{day:02d}") for day in range(10, 30)), report("r1", "2026-11-01")]
    result = read(*resources, max_notes=2, max_reports=1)
    assert "DiagnosticReport/r1" in references(result)
    assert result.unread == ["clinical notes: 18 older notes not read (limit 2)"]


def test_reports_beyond_their_cap_are_summarised():
    result = read(report("r1", "2026-11-01"), report("r2", "2026-11-02"), max_reports=1)
    assert references(result) == ["DiagnosticReport/r2"]
    assert result.unread == ["imaging and pathology reports: 1 older report not read (limit 1)"]


def test_an_unreadable_note_takes_no_place_under_the_cap():
    pdf = document("scan", "2026-11-25", {"contentType": "application/pdf", "data": b64("%PDF")})
    result = read(pdf, document("n1", "2026-11-20"), max_notes=1)
    assert references(result) == ["DocumentReference/n1"]
    assert result.unread == ["Progress note (2026-11-25): only a PDF, not read"]


def test_unreadable_notes_beyond_the_cap_are_counted_not_listed():
    scans = [document(f"scan{day}", f"2026-11-{day:02d}", {"contentType": "application/pdf", "data": b64("%PDF")})
             for day in range(10, 14)]
    result = read(*scans, document("n1", "2026-11-01"), max_notes=2)
    assert references(result) == ["DocumentReference/n1"]
    assert result.unread == ["Progress note (2026-11-13): only a PDF, not read",
                             "Progress note (2026-11-12): only a PDF, not read",
                             "clinical notes: 2 more notes in a form that is not read (PDF, images, attachments "
                             "elsewhere)"]


def test_the_record_caps_default_to_20_notes_and_10_reports():
    record = PatientRecord(patient=None)
    assert (record.max_notes, record.max_reports) == (20, 10)


# ---------------------------------------------------------------------------- Binaries to fetch


def test_binaries_to_fetch_are_those_of_the_notes_that_will_be_read():
    resources = [document(f"n{day:02d}", f"2026-11-{day:02d}", {"contentType": "text/plain", "url": f"Binary/b{day}"})
                 for day in range(1, 6)]
    assert binaries_to_fetch(resources, SERVER, 3, 10) == ["b5", "b4", "b3"]


def test_binaries_already_in_the_record_are_not_fetched_again():
    resources = [document("n1", "2026-11-01", {"contentType": "text/plain", "url": "Binary/b1"}),
                 binary("b1", "held")]
    assert binaries_to_fetch(resources, SERVER, 20, 10) == []


def test_no_binary_is_fetched_from_another_server_or_for_a_pdf():
    resources = [document("n1", "2026-11-01", {"contentType": "text/plain", "url": "https://other.example/fhir/Binary/b1"}),
                 document("n2", "2026-11-02", {"contentType": "application/pdf", "url": "Binary/b2"})]
    assert binaries_to_fetch(resources, SERVER, 20, 10) == []


def test_a_report_presented_form_binary_is_fetched():
    resource = report("r1", presentedForm=[{"contentType": "text/html", "url": f"{SERVER}/Binary/rb1"}])
    assert binaries_to_fetch([resource], SERVER, 20, 10) == ["rb1"]


def test_binary_ids_come_only_from_binary_urls_on_the_fhir_server():
    assert binary_id("Binary/abc-1", SERVER) == "abc-1"
    assert binary_id(f"{SERVER}/Binary/abc", SERVER) == "abc"
    assert binary_id("https://EHR.example.org:443/fhir/R4/Binary/abc", SERVER) == "abc"
    assert binary_id("https://ehr.example.org/fhir/R4x/Binary/abc", SERVER) is None
    assert binary_id("http://ehr.example.org/fhir/R4/Binary/abc", SERVER) is None
    assert binary_id("https://ehr.example.org.evil.com/fhir/R4/Binary/abc", SERVER) is None
    assert binary_id("DocumentReference/abc", SERVER) is None
    assert binary_id("Binary/../../x", SERVER) is None


# ---------------------------------------------------------------------------- malformed data


MALFORMED = [
    {"resourceType": "DocumentReference", "id": ["x"], "status": "current", "content": "text"},
    {"resourceType": "DocumentReference", "id": "m0", "status": "current", "docStatus": ["final"]},
    {"resourceType": "DocumentReference", "id": "m1", "status": "current", "date": 5,
     "relatesTo": ["replaces", {"code": "replaces", "target": "DocumentReference/n1"}],
     "category": [{"coding": [{"code": ["clinical-note"]}]}], "type": {"coding": "11506-3"},
     "content": [None, {"attachment": {"contentType": 7, "data": 5}},
                 {"attachment": {"contentType": "text/plain; charset=\"", "data": b64("ok")}}]},
    {"resourceType": "DiagnosticReport", "id": "m2", "status": ["final"], "category": "RAD", "conclusion": 3},
    {"resourceType": "DiagnosticReport", "id": "m3", "status": "final", "effectiveDateTime": "soon",
     "category": [{"coding": [{"system": LOINC, "code": "LP29684-5"}]}], "conclusion": ["x"],
     "presentedForm": [{"contentType": "text/html", "url": {"a": 1}},
                       {"contentType": "text/html", "data": b64("<p>lesion")}]},
    {"resourceType": "Binary", "id": {"x": 1}, "data": 3},
]


def test_malformed_notes_never_raise_and_what_can_be_read_is_read():
    result = read(*MALFORMED, fhir_server=SERVER)
    assert [(n.reference, n.text) for n in result.notes] == [("DocumentReference/m1", "ok"),
                                                             ("DiagnosticReport/m3", "lesion")]
    assert binaries_to_fetch(MALFORMED, SERVER, 20, 10) == []


def test_a_note_held_twice_takes_one_place_under_the_cap():
    resources = [document("n2", "2026-11-02", {"contentType": "text/plain", "url": "Binary/b2"}),
                 document("n2", "2026-11-02", {"contentType": "text/plain", "url": "Binary/b2"}),
                 document("n1", "2026-11-01", {"contentType": "text/plain", "url": "Binary/b1"})]
    assert binaries_to_fetch(resources, SERVER, 2, 10) == ["b2", "b1"]


def test_a_malformed_content_type_is_never_read_as_text():
    resource = document("n1", "2026-11-20", {"contentType": "pdf", "data": b64("%PDF-1.7")})
    assert read(resource).unread == ["Progress note (2026-11-20): only a pdf attachment, not read"]


def test_content_types_are_compared_without_case():
    resource = document("n1", "2026-11-20", {"contentType": "Text/HTML; Charset=UTF-8", "data": b64("<b>ok</b>")})
    assert read(resource).notes[0].text == "ok"
