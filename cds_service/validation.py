"""JSON Schema validation of requests and responses; the schemas are data files in schemas/."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource

SCHEMA_DIR = Path(__file__).parent / "schemas"


@cache
def _registry() -> Registry:
    resources = []
    for path in SCHEMA_DIR.glob("*.schema.json"):
        contents = json.loads(path.read_text(encoding="utf-8"))
        resources.append((path.name, Resource.from_contents(contents)))
    return Registry().with_resources(resources)


@cache
def validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))
    return Draft202012Validator(schema, registry=_registry(), format_checker=FormatChecker())


def _path(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(root)"


def problems(name: str, instance, prefix: str = "") -> list[dict]:
    """Every violation as {"field", "reason"}, sorted by field, so a client can fix all at once."""
    found = []
    for error in validator(name).iter_errors(instance):
        field = _path(error)
        if prefix:
            field = prefix if field == "(root)" else f"{prefix}.{field}"
        reason = error.message
        if len(reason) > 300:
            reason = reason[:297] + "..."
        found.append({"field": field, "reason": reason})
    return sorted(found, key=lambda p: p["field"])
