"""What a request body may hold: JSON Schema validation (the schemas are data files in schemas/) and the
configured input limits (nesting depth, string length, Bundle entries, draft orders)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource

from .errors import ServiceError
from .settings import Settings, env_name

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


# ---------------------------------------------------------------- input limits
# One pass over the parsed body (no per-object parser hooks: the parser may be swapped for a faster one).

def setting_name(key: str) -> str:
    """How an error names the setting to change: the key and its environment variable."""
    return f"{key} ({env_name(key)})"


def _walk(body, max_depth: int, max_string: int | None, max_entries: int, paths: bool):
    """The first limit the body breaks, as (kind, path, size), or None.

    kind is "depth", "number" (out of range), "string" or "bundle"; path is a tuple of keys and indices
    when ``paths`` is set (the slower mode, used only to name the field once a violation is known).
    ``max_string`` None skips the string check (a body shorter than the limit cannot hold a longer string).
    """
    stack = [(body, 1, ())]
    while stack:
        node, level, path = stack.pop()
        if level > max_depth:
            return "depth", path, level
        items = node.items() if type(node) is dict else enumerate(node)
        if type(node) is dict and node.get("resourceType") == "Bundle":
            entries = node.get("entry")
            if type(entries) is list and len(entries) > max_entries:
                return "bundle", path + ("entry",) if paths else path, len(entries)
        for key, child in items:
            kind = type(child)
            if kind is dict or kind is list:
                stack.append((child, level + 1, path + (key,) if paths else path))
            elif kind is float and child - child != 0:  # 1e400 parses as infinity
                return "number", path + (key,) if paths else path, 0
            elif max_string is not None:
                if kind is str and len(child) > max_string:
                    return "string", path + (key,) if paths else path, len(child)
                if type(key) is str and len(key) > max_string:
                    return "string", path + (key,) if paths else path, len(key)
    return None


def _field(path: tuple, keep: int = 12) -> str:
    parts = [str(p) for p in path]
    if len(parts) > keep:
        parts = parts[:keep] + ["..."]
    return ".".join(parts) or "(root)"


def check_limits(body, raw_length: int, settings: Settings) -> None:
    """Nesting depth and infinite numbers (400), string length and Bundle entries (413), naming the setting."""
    max_string = settings.max_string_length if raw_length > settings.max_string_length else None
    limits = (settings.max_json_depth, max_string, settings.max_bundle_entries)
    if _walk(body, *limits, paths=False) is None:
        return
    kind, path, size = _walk(body, *limits, paths=True)
    if kind == "depth":
        raise ServiceError(400, f"the request body is nested more than {settings.max_json_depth} levels deep; "
                                f"the limit is {setting_name('max_json_depth')}",
                           [{"field": _field(path), "reason": f"nested deeper than max_json_depth = "
                                                             f"{settings.max_json_depth}"}])
    if kind == "number":
        raise ServiceError(400, "a number in the request body is out of range (it would be infinite)",
                           [{"field": _field(path), "reason": "beyond the range of a double"}])
    if kind == "string":
        raise ServiceError(413, f"a string in the request body is longer than {settings.max_string_length} "
                                f"characters; the limit is {setting_name('max_string_length')}",
                           [{"field": _field(path), "reason": f"{size} characters; max_string_length = "
                                                             f"{settings.max_string_length}"}])
    raise ServiceError(413, f"a Bundle in the request has more than {settings.max_bundle_entries} entries; "
                            f"the limit is {setting_name('max_bundle_entries')}",
                       [{"field": _field(path), "reason": f"{size} entries; max_bundle_entries = "
                                                         f"{settings.max_bundle_entries}"}])


def check_draft_orders(context, settings: Settings) -> None:
    """More draft orders than max_draft_orders is 413 (an order hook carries a handful)."""
    draft = context.get("draftOrders") if isinstance(context, dict) else None
    entries = draft.get("entry") if isinstance(draft, dict) else None
    if isinstance(entries, list) and len(entries) > settings.max_draft_orders:
        raise ServiceError(413, f"context.draftOrders has more than {settings.max_draft_orders} entries; "
                                f"the limit is {setting_name('max_draft_orders')}",
                           [{"field": "context.draftOrders.entry", "reason": f"{len(entries)} entries; "
                             f"max_draft_orders = {settings.max_draft_orders}"}])
