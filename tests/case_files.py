"""Reading the clinical cases (tests/cases/*.json) as a request would carry them.

Dates are written relative to the day of the test ("@today-2w", see cds_service.example_patients), and note text
is written readably: an attachment's ``"data": "@text:<text>"`` becomes that text base64-encoded (UTF-8), as FHIR
carries it, so a reviewer reads the note in the case file rather than an opaque blob.
"""

from __future__ import annotations

import base64
import json
from datetime import date
from pathlib import Path

from cds_service.example_patients import resolve_dates

TEXT_PREFIX = "@text:"


def encode_note_texts(value):
    """Every ``"data": "@text:…"`` in a JSON-like structure replaced by the base64 of the text."""
    if isinstance(value, dict):
        return {k: (base64.b64encode(v.removeprefix(TEXT_PREFIX).encode("utf-8")).decode("ascii")
                    if k == "data" and isinstance(v, str) and v.startswith(TEXT_PREFIX) else encode_note_texts(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [encode_note_texts(v) for v in value]
    return value


def load_case(path: Path, today: date) -> dict:
    """The case at ``path`` with its dates resolved against ``today`` and its note texts encoded."""
    return encode_note_texts(resolve_dates(json.loads(Path(path).read_text(encoding="utf-8")), today))
