"""Parsing a request body: orjson (Rust) and a structural scan of the raw bytes for the input limits.

The limits (nesting depth, string length, Bundle entries) are checked without any per-object Python
work: a few C-level passes over the raw text prove that a body is within them. Only a body the scan
cannot clear gets the exact walk over the parsed value (``validation.check_limits``), which names the
field; a false alarm there costs time, never a wrong answer.

Duplicate keys are not refused: RFC 8259 leaves their meaning undefined, and finding them needs a
look at every object. The last value wins, as in JavaScript and Python's own ``json``.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

import orjson

from .errors import ServiceError
from .settings import Settings
from .validation import check_limits, setting_name

_KEEP = b'"[]{},'  # quotes delimit strings; brackets and commas are the structure
_DELETE = bytes(b for b in range(256) if b not in _KEEP)
_AS_LISTS = bytes.maketrans(b"{}", b"[]")  # for depth, an object is a container like a list
_LEAF = re.compile(rb"\[,*\]|\{,*\}")


@lru_cache(maxsize=8)
def _long_string(max_string: int) -> re.Pattern:
    return re.compile(rb'"[^"]{%d}' % (max_string + 1))


@lru_cache(maxsize=8)
def _long_list(max_entries: int) -> re.Pattern:
    return re.compile(rb"\[,{%d}" % max_entries)


def within_limits(raw: bytes, max_depth: int, max_string: int, max_entries: int) -> bool:
    """True when a JSON text (one that parsed) is certainly within the limits; False when it may not be.

    Strings are cut out by their quotes (after the two escapes that can hide a quote or a backslash
    are replaced by one byte each, so a string's raw length never falls below its length in
    characters). Left is the bracket structure: each pass removes the innermost containers, so a
    body deeper than ``max_depth`` is what remains after ``max_depth`` passes. A list with more than
    ``max_entries`` entries shows as a container holding that many commas once its children are gone.
    """
    text = raw
    if b"\\" in text:
        text = text.replace(b"\\\\", b"x").replace(b'\\"', b"x")
    if len(text) > max_string and _long_string(max_string).search(text):
        return False
    structure = b"".join(text.translate(None, _DELETE).split(b'"')[::2])
    if structure.count(b",") < max_entries:  # no list can have more entries: drop commas, count levels
        structure = structure.translate(_AS_LISTS, b",")
        for _ in range(max_depth):
            if not structure:
                return True
            structure = structure.replace(b"[]", b"")
        return not structure
    long_list = _long_list(max_entries)
    for _ in range(max_depth):
        if not structure:
            return True
        if long_list.search(structure):
            return False
        structure = _LEAF.sub(b"", structure)
    return not structure


def parse(raw: bytes, settings: Settings) -> dict:
    """The body as a JSON object within the configured limits, or a 400/413 ServiceError."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        _refuse(raw, exc, settings)
    if not isinstance(body, dict):
        raise ServiceError(400, "the request body must be a JSON object")
    if not within_limits(raw, settings.max_json_depth, settings.max_string_length, settings.max_bundle_entries):
        check_limits(body, len(raw), settings)
    return body


def _refuse(raw: bytes, exc: orjson.JSONDecodeError, settings: Settings):
    """Why the text was refused, as a 400; a number beyond a double's range is named by its field."""
    if "depth limit" in exc.msg:  # orjson's own limit (1024) is far above any sensible max_json_depth
        raise ServiceError(400, f"the request body is nested more than {settings.max_json_depth} levels deep; "
                                f"the limit is {setting_name('max_json_depth')}") from None
    if "infinity" in exc.msg:  # Python's parser reads it as inf, and the exact walk names the field
        try:
            check_limits(json.loads(raw), len(raw), settings)
        except (ValueError, RecursionError):
            pass
    reason = str(exc)
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        if raw[exc.pos:exc.pos + len(constant)] == constant:
            reason = f"{constant.decode()} is not valid JSON ({reason})"
    raise ServiceError(400, f"the request body is not valid JSON: {reason[:200]}") from None
