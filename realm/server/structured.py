"""OpenAI's `response_format` as a guest request's "constraint" field (constrained decoding, docs/serve.md)."""

from __future__ import annotations

import json
from typing import Any

from host_functions.constraint import KINDS, compile_grammar
from host_functions.errors import RealmError
from realm.request.fields import RequestFieldError


def response_format_constraint(value: Any) -> dict[str, str] | None:
    """The constraint `response_format` asks for: None for text, any JSON object for json_object, the
    schema of json_schema (strict or not: the output always follows it). Raises RequestFieldError
    naming `response_format` for any other form, or a schema the grammar engine refuses."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"kind": "json_object", "text": ""}
    if kind != "json_schema":
        raise RequestFieldError(f"response_format.type must be text, json_object or json_schema, got {kind!r}",
                                "response_format")
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema") or {}, dict):
        raise RequestFieldError('response_format.json_schema must be an object with a "schema" object',
                                "response_format")
    if not isinstance(spec.get("strict") or False, bool):
        raise RequestFieldError("response_format.json_schema.strict must be a boolean", "response_format")
    constraint = {"kind": "json_schema", "text": json.dumps(spec.get("schema") or {"type": "object"})}
    check_grammar(constraint, "response_format")
    return constraint


def check_grammar(constraint: dict[str, str], param: str) -> None:
    """Raise RequestFieldError naming `param` when the grammar engine refuses the constraint (invalid or
    too large)."""
    try:
        compile_grammar(KINDS[constraint["kind"]], constraint["text"])
    except RealmError as exc:
        raise RequestFieldError(f"{param}: {exc}", param) from None
