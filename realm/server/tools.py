"""OpenAI tools on a chat request: definitions into the prompt, calls constrained to their schemas,
and the output read back as `tool_calls` (docs/serve.md, "Structured output and tools").

The model is asked to answer a call as a JSON array `[{"name": ..., "arguments": {...}}, ...]`, and
the reference guest's constraint makes that the only thing it can write: with `tool_choice`
"required" or a named function always (each call's arguments follow its function's `parameters`),
with "auto" either that array or text that does not start with "[". "none" renders the tools and
constrains nothing.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from realm.chat import ChatTemplate
from realm.request.fields import RequestFieldError
from realm.server.structured import check_grammar

MAX_TOOLS = 128  # OpenAI's limit
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# "auto": the calls, or text whose first character cannot start them.
_AUTO_GRAMMAR = "start: calls | TEXT\ncalls: %json {schema}\nTEXT: /[^\\[\\s][\\s\\S]*/\n"


@dataclass(frozen=True)
class ChatPlan:
    """How a chat request's tools shape its prompt, its constraint and its response."""

    messages: list[Any]  # the messages for the template (tool turns folded for a template without them)
    tools: list[dict[str, Any]] | None  # given to a template that renders tools itself
    constraint: dict[str, str] | None  # the guest's "constraint" field for the calls
    tool_mode: str | None  # "required": the output is calls; "auto": calls or text; None: text


def plan_tools(body: Mapping[str, Any], messages: list[Any], template: ChatTemplate) -> ChatPlan:
    """The plan for `tools`, `tool_choice` and `parallel_tool_calls`; RequestFieldError naming the field
    for anything the server cannot honour."""
    for old in ("functions", "function_call"):
        if body.get(old) is not None:
            raise RequestFieldError(f"{old} is deprecated and not supported: use tools", old)
    tools = _tools(body.get("tools"))
    choice = _choice(body.get("tool_choice"), tools)
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise RequestFieldError("parallel_tool_calls must be a boolean", "parallel_tool_calls")
    if not template.renders_tools:
        messages = [_as_text(m) for m in messages]
    if not tools:
        return ChatPlan(messages, None, None, None)
    if choice != "none" and body.get("response_format") not in (None, {"type": "text"}):
        raise RequestFieldError("response_format with tools needs tool_choice none", "response_format")
    named = [t for t in tools if choice in ("auto", "required") or t["function"]["name"] == choice]
    schema = json.dumps(_calls_schema(named, parallel))
    constraint = None if choice == "none" else (
        {"kind": "lark", "text": _AUTO_GRAMMAR.format(schema=schema)} if choice == "auto"
        else {"kind": "json_schema", "text": schema})
    if constraint:
        check_grammar(constraint, "tools")
    mode = None if choice == "none" else "auto" if choice == "auto" else "required"
    if mode:
        messages = _with_instructions(messages, tools, template, mode)
    return ChatPlan(messages, tools if template.renders_tools else None, constraint, mode)


def tool_calls(text: str, mode: str | None) -> list[dict[str, Any]] | None:
    """The OpenAI `tool_calls` of a choice's text under `mode`, or None when it holds none (text under
    "auto"). Calls cut short by max_tokens are dropped: the complete ones before them are returned."""
    if mode is None or not text.lstrip().startswith("["):
        return None
    calls = _complete_calls(text.lstrip()[1:])
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments", {}))}}
            for c in calls] or None


def _complete_calls(text: str) -> list[dict[str, Any]]:
    """The whole call objects at the start of `text` (an array's items, after its "[")."""
    decoder, at = json.JSONDecoder(), 0
    calls: list[dict[str, Any]] = []
    while True:
        try:
            call, at = decoder.raw_decode(text, at)
        except ValueError:
            return calls
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return calls
        calls.append(call)
        at += len(text[at:]) - len(text[at:].lstrip(", \n"))


def _tools(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_TOOLS:
        raise RequestFieldError(f"tools must be a list of at most {MAX_TOOLS} tools", "tools")
    for i, tool in enumerate(value):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            raise RequestFieldError(f'tools[{i}] must be {{"type": "function", "function": {{...}}}}', "tools")
        if not isinstance(fn.get("name"), str) or not _NAME.fullmatch(fn["name"]):
            raise RequestFieldError(f"tools[{i}].function.name must be 1..64 of a-z, A-Z, 0-9, _ and -", "tools")
        if not isinstance(fn.get("parameters") or {}, dict) or not isinstance(fn.get("description") or "", str):
            raise RequestFieldError(f"tools[{i}].function: parameters must be an object, description a string",
                                    "tools")
    return value


def _choice(value: Any, tools: Sequence[dict[str, Any]]) -> str:
    """"none", "auto", "required" or the name of the function to call."""
    names = {t["function"]["name"] for t in tools}
    if value is None:
        return "auto" if tools else "none"
    if value in ("none", "auto", "required"):
        if value != "none" and not tools:
            raise RequestFieldError(f"tool_choice {value!r} needs tools", "tool_choice")
        return str(value)
    fn = value.get("function") if isinstance(value, dict) and value.get("type") == "function" else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if name not in names:
        raise RequestFieldError('tool_choice must be none, auto, required or {"type": "function", "function": '
                                '{"name": NAME}} naming one of the tools', "tool_choice")
    return str(name)


def _calls_schema(tools: Sequence[dict[str, Any]], parallel: bool) -> dict[str, Any]:
    """A JSON array of calls of `tools`, each {"name": its name, "arguments": its parameters}."""
    calls = [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
              "properties": {"name": {"const": t["function"]["name"]},
                             "arguments": t["function"].get("parameters") or {"type": "object"}}} for t in tools]
    schema: dict[str, Any] = {"type": "array", "items": calls[0] if len(calls) == 1 else {"anyOf": calls},
                              "minItems": 1}
    if not parallel:
        schema["maxItems"] = 1
    return schema


def _with_instructions(messages: list[Any], tools: Sequence[dict[str, Any]], template: ChatTemplate,
                       mode: str) -> list[Any]:
    """The messages with a system note of the tools (unless the template lists them) and of the form
    of a call."""
    listing = "" if template.renders_tools else "Functions:\n" + "\n".join(
        json.dumps({k: t["function"][k] for k in ("name", "description", "parameters") if k in t["function"]})
        for t in tools) + "\n"
    how = ('To call functions, answer with only a JSON array of calls: [{"name": "NAME", "arguments": {...}}].'
           if mode != "required" else 'Answer with only a JSON array of calls: [{"name": "NAME", "arguments": '
                                      '{...}}].')
    note = f"You can call functions.\n{listing}{how}"
    first = messages[0] if messages else None
    if isinstance(first, dict) and first.get("role") in ("system", "developer") and isinstance(first.get("content"),
                                                                                                str):
        return [{**first, "content": f"{first['content']}\n\n{note}"}, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]


def _as_text(message: Any) -> Any:
    """A tool turn as a template without tool turns can show it: results as user text, calls as JSON."""
    if not isinstance(message, dict):
        return message
    if message.get("role") == "tool":
        return {"role": "user", "content": f"Result of call {message.get('tool_call_id', '')}: "
                                           f"{message.get('content', '')}"}
    calls = message.get("tool_calls")
    if message.get("role") == "assistant" and isinstance(calls, list) and not message.get("content"):
        return {"role": "assistant", "content": json.dumps([_call_text(c) for c in calls])}
    return message


def _call_text(call: Any) -> Any:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict):
        return call
    try:
        arguments = json.loads(fn.get("arguments") or "{}")
    except (TypeError, ValueError):
        arguments = fn.get("arguments")
    return {"name": fn.get("name"), "arguments": arguments}
