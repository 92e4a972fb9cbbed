"""Structured output and tools through `realm serve` and `realm run`, as a client sees them: every
constrained answer parses and validates against its JSON schema (the `jsonschema` package), greedy
and sampled, streamed and not; tool_choice required gives valid tool_calls; what the server cannot
honour is a 400 naming the field."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest
from oracle import DATA
from test_serve import MODEL, Served, serving

POINT = {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9},
                                          "y": {"type": "integer", "minimum": 0, "maximum": 9}},
         "required": ["x", "y"], "additionalProperties": False}
SCHEMAS = {
    "object with an enum": {"type": "object", "additionalProperties": False, "required": ["city", "country", "rank"],
                            "properties": {"city": {"type": "string", "maxLength": 16},
                                           "country": {"enum": ["France", "Spain", "Italy"]},
                                           "rank": {"type": "integer", "minimum": 1, "maximum": 50}}},
    "bounded array": {"type": "object", "additionalProperties": False, "required": ["colors"],
                      "properties": {"colors": {"type": "array", "minItems": 2, "maxItems": 3,
                                                "items": {"enum": ["red", "green", "blue"]}}}},
    "pattern": {"type": "object", "additionalProperties": False, "required": ["code"],
                "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}}},
    "anyOf": {"anyOf": [{"type": "object", "additionalProperties": False, "required": ["ok"],
                         "properties": {"ok": {"type": "boolean"}}},
                        {"type": "object", "additionalProperties": False, "required": ["error"],
                         "properties": {"error": {"type": "string", "maxLength": 12}}}]},
    "$ref and nesting": {"$defs": {"point": POINT}, "type": "object", "additionalProperties": False,
                         "required": ["line"],
                         "properties": {"line": {"type": "object", "additionalProperties": False,
                                                 "required": ["start", "end"],
                                                 "properties": {"start": {"$ref": "#/$defs/point"},
                                                                "end": {"$ref": "#/$defs/point"}}}}},
}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"type": "string", "maxLength": 16}, "unit": {"enum": ["c", "f"]}}}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "additionalProperties": False, "required": ["zone"],
                                       "properties": {"zone": {"enum": ["UTC", "CET"]}}}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(tmp_path_factory.mktemp("structured")) as server:
        yield server


@pytest.fixture(scope="module")
def client(served: Served) -> openai.OpenAI:
    return served.client(served.tenant("main"))


def _answer(client: openai.OpenAI, stream: bool, **body) -> tuple[str, str]:
    """(content, finish_reason) of one chat completion, streamed or not."""
    if not stream:
        done = client.chat.completions.create(model=MODEL, max_tokens=80, **body)
        return done.choices[0].message.content, done.choices[0].finish_reason
    text, reason = "", None
    for part in client.chat.completions.create(model=MODEL, max_tokens=80, stream=True, **body):
        text += part.choices[0].delta.content or ""
        reason = part.choices[0].finish_reason or reason
    return text, reason


@pytest.mark.parametrize(("name", "temperature", "stream"), [
    ("object with an enum", 0, False), ("bounded array", 1.0, True), ("pattern", 0, True),
    ("anyOf", 1.0, False), ("$ref and nesting", 0, False)])
def test_every_json_schema_answer_parses_and_validates(client, name, temperature, stream):
    schema = SCHEMAS[name]
    text, reason = _answer(client, stream, messages=[{"role": "user", "content": f"Answer in JSON: {name}"}],
                           temperature=temperature, seed=3,
                           response_format={"type": "json_schema",
                                            "json_schema": {"name": "answer", "schema": schema, "strict": True}})
    assert reason == "stop", text
    jsonschema.validate(json.loads(text), schema)


def test_json_object_is_a_json_object_or_cut_short_by_max_tokens(client):
    # The bundled base model writes keys until max_tokens: "length", a JSON object's beginning (docs/serve.md).
    text, reason = _answer(client, True, messages=[{"role": "user", "content": "A JSON object, please."}],
                           temperature=0, response_format={"type": "json_object"}, max_completion_tokens=12)
    assert text.startswith("{") and (reason == "length" or isinstance(json.loads(text), dict)), (text, reason)


def _calls_of(client: openai.OpenAI, stream: bool, **body) -> tuple[list[tuple[str, dict]], str]:
    """((name, arguments) of every tool call, finish_reason), streamed deltas put together."""
    if not stream:
        done = client.chat.completions.create(model=MODEL, max_tokens=80, messages=ASK, temperature=0, **body)
        message = done.choices[0].message
        assert message.content is None
        return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls], \
            done.choices[0].finish_reason
    calls: dict[int, list[str]] = {}
    reason = None
    for part in client.chat.completions.create(model=MODEL, max_tokens=80, messages=ASK, temperature=0,
                                               stream=True, **body):
        for delta in part.choices[0].delta.tool_calls or ():
            name, args = calls.setdefault(delta.index, ["", ""])
            calls[delta.index] = [name + (delta.function.name or ""), args + (delta.function.arguments or "")]
        reason = part.choices[0].finish_reason or reason
    return [(name, json.loads(args)) for name, args in calls.values()], reason


@pytest.mark.parametrize("stream", [False, True])
def test_tool_choice_required_returns_valid_tool_calls(client, stream):
    calls, reason = _calls_of(client, stream, tools=[WEATHER, TIME], tool_choice="required",
                              parallel_tool_calls=False)
    assert reason == "tool_calls" and len(calls) == 1
    name, arguments = calls[0]
    schema = {"get_weather": WEATHER, "get_time": TIME}[name]["function"]["parameters"]
    jsonschema.validate(arguments, schema)


def test_a_named_tool_choice_calls_that_function(client):
    calls, reason = _calls_of(client, False, tools=[WEATHER, TIME], parallel_tool_calls=False,
                              tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert reason == "tool_calls" and [name for name, _ in calls] == ["get_time"]
    jsonschema.validate(calls[0][1], TIME["function"]["parameters"])


def test_tool_and_developer_turns_are_accepted(client):
    done = client.chat.completions.create(model=MODEL, max_tokens=4, temperature=0, tools=[WEATHER], messages=[
        {"role": "developer", "content": "Answer briefly."}, *ASK,
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees, sunny"}], tool_choice="none")
    assert done.choices[0].finish_reason == "length" and done.choices[0].message.tool_calls is None


@pytest.mark.parametrize(("body", "param"), [
    ({"response_format": {"type": "sound"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objec"}}}},
     "response_format"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "retrieval"}]}, "tools"),
    ({"functions": [{"name": "f"}]}, "functions")])
def test_what_the_server_cannot_honour_is_a_400_naming_the_field(client, body, param):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, **body)
    assert refused.value.body["param"] == param


def test_tools_on_completions_are_a_400(served, client):
    response = httpx.post(served.url + "/v1/completions", headers={"Authorization": f"Bearer {client.api_key}"},
                          json={"model": MODEL, "prompt": "x", "tools": [WEATHER]}, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["param"] == "tools"


def test_realm_run_json_schema_output_validates(realm, tmp_path: Path):
    schema = SCHEMAS["object with an enum"]
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    done = realm("run", "Question: a city, as JSON.\nAnswer:", "--json-schema", "schema.json", "--max-tokens", "60",
                 "--temperature", "0", "--backend", "cpu", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["finish_reason"] == "stop"
    jsonschema.validate(json.loads(result["text"]), schema)


def test_realm_run_regex_and_a_bad_grammar(realm, tmp_path: Path):
    done = realm("run", "The year is", "--regex", " [0-9]{4}\\.", "--max-tokens", "10", "--backend", "cpu", "-q")
    assert done.returncode == 0 and re.fullmatch(r" [0-9]{4}\.\n", done.stdout), done.stdout  # realm run ends a line
    (tmp_path / "bad.lark").write_text("start: nothing_defined\n")
    bad = realm("run", "x", "--grammar", "bad.lark", "--backend", "cpu")
    assert bad.returncode != 0 and bad.stderr.startswith("Error: ") and "lark" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_bench_json_schema_reports_decode_with_and_without_the_schema(realm, tmp_path: Path):
    (tmp_path / "schema.json").write_text(json.dumps({"type": "array", "minItems": 8, "items": POINT}))
    done = realm("bench", "--model", str(DATA / "tiny-llama-Q4_K.gguf"), "--backend", "numpy", "--json-schema",
                 "schema.json", "--concurrency", "1,2", "--decode-tokens", "8", "--rounds", "1", "--json")
    assert done.returncode == 0, done.stderr
    levels = json.loads(done.stdout)
    assert [r["concurrency"] for r in levels] == [1, 2] and [r["constrained_tokens"] for r in levels] == [8, 16]
    assert all(r["ratio"] > 0 and r["aggregate_tok_s"] > 0 for r in levels)
    (tmp_path / "bad.json").write_text('{"type": "objec"}')
    bad = realm("bench", "--json-schema", "bad.json", "--backend", "numpy")
    assert bad.returncode == 2 and "Invalid type" in bad.stderr
