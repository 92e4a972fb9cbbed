"""The ABI is defined once (host_functions/abi/); the SDK header, the docs and the built guests follow it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import wasmtime

from host_functions.abi import (
    ABI_VERSION,
    HOST_FUNCTIONS,
    TEXT_FLUSH,
    AbiError,
    BiasMode,
    FinishReason,
    GuestMemory,
    HandleTable,
    Limits,
    Status,
    TokenizeFlags,
    info_fields,
    sampling_params_from_json,
)
from host_functions.errors import GuestError

ROOT = Path(__file__).resolve().parent.parent
HEADER = (ROOT / "guest" / "realm.h").read_text()
DOCS = (ROOT / "docs" / "abi.md").read_text()


def header_constants() -> dict[str, int]:
    """Every `NAME = value` in the header's enums and every `#define NAME value`."""
    found = {m[0]: int(m[1]) for m in re.findall(r"^\s+(REALM_\w+) = (-?\d+),?", HEADER, re.M)}
    found |= {m[0]: int(m[1]) for m in re.findall(r"^#define (REALM_\w+)\s+\(?(-?\d+)\)?", HEADER, re.M)}
    return found


def test_header_status_codes_equal_the_python_enum():
    consts = header_constants()
    assert consts["REALM_OK"] == Status.OK
    for status in Status:
        if status != Status.OK:
            assert consts[f"REALM_ERR_{status.name}"] == status.value, status
    assert len([k for k in consts if k.startswith("REALM_ERR_")]) == len(Status) - 1


def test_header_modes_flags_and_constants_equal_the_python_ones():
    consts = header_constants()
    assert {m: consts[f"REALM_BIAS_{m.name}"] for m in BiasMode} == {m: m.value for m in BiasMode}
    assert {f: consts[f"REALM_TOKENIZE_{f.name}"] for f in TokenizeFlags} == {f: f.value for f in TokenizeFlags}
    assert consts["REALM_TEXT_FLUSH"] == TEXT_FLUSH
    assert {r: consts[f"REALM_FINISH_{r.name}"] for r in FinishReason} == {r: r.value for r in FinishReason}
    assert consts["REALM_ABI_VERSION"] == ABI_VERSION


def test_header_declares_every_host_function_with_its_arity():
    declared = dict(re.findall(r"REALM_IMPORT\((\w+)\) int32_t \w+\(([^)]*)\)", HEADER))
    assert set(declared) == set(HOST_FUNCTIONS)
    for name, params in declared.items():
        assert len(params.split(",")) == len(HOST_FUNCTIONS[name].params), name


def test_header_model_info_struct_matches_the_host_layout():
    body = re.search(r"typedef struct \{([^}]*)\} realm_model_info;", HEADER)[1]
    assert tuple(re.findall(r"int32_t (\w+);", body)) == info_fields()


def test_docs_describe_every_host_function_and_status():
    for name, fn in HOST_FUNCTIONS.items():
        assert re.search(rf"`{name}\({', '.join(fn.params)}\)", DOCS), f"docs/abi.md lacks {name}{fn.params}"
    for status in Status:
        assert f"`{status.name}`" in DOCS and f"| {status.value} " in DOCS, status


def test_committed_guests_are_exactly_what_the_build_script_produces():
    pytest.importorskip("ziglang")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_guests.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "checked guest/generate.wasm" in done.stdout and "checked guest/choice.wasm" in done.stdout


@pytest.fixture()
def memory() -> tuple[wasmtime.Memory, wasmtime.Store]:
    store = wasmtime.Store()
    return wasmtime.Memory(store, wasmtime.MemoryType(wasmtime.Limits(1, 1))), store


@pytest.mark.parametrize("ptr, count, itemsize", [
    (-1, 1, 1), (0, -1, 1), (65535, 2, 1), (65536, 1, 1), (0, 16385, 4), (2**31 - 1, 2**31 - 1, 1),
    (-2**31, 2**31 - 1, 4), (65532, 2, 4)])
def test_guest_memory_rejects_negative_overflowing_and_out_of_bounds_spans(memory, ptr, count, itemsize):
    with pytest.raises(AbiError) as err:
        GuestMemory(*memory).span(ptr, count, itemsize)
    assert err.value.status == Status.BAD_POINTER


def test_guest_memory_accepts_spans_up_to_the_last_byte_and_round_trips_data(memory):
    mem = GuestMemory(*memory)
    mem.span(0, 65536)
    mem.span(65536, 0)
    mem.write(65532, np.array([7], "<i4"))
    assert mem.read_array(65532, 1, "<i4").tolist() == [7]
    assert mem.write(100, b"hello", cap=3) == 3
    assert mem.read(100, 5) == b"hel\0\0"


def test_guest_memory_is_unavailable_before_the_instance_exports_it():
    with pytest.raises(AbiError) as err:
        GuestMemory(None, None).span(0, 0)
    assert err.value.status == Status.WRONG_STATE


def test_handles_are_unique_positive_and_dead_once_removed():
    table = HandleTable()
    objs = [object() for _ in range(100)]
    handles = [table.add(o) for o in objs]
    assert len(set(handles)) == 100 and all(0 < h < 2**31 for h in handles)
    assert table.get(handles[3], object) is objs[3]
    table.remove(handles[3], object)
    with pytest.raises(AbiError) as err:
        table.get(handles[3], object)
    assert err.value.status == Status.BAD_HANDLE
    assert table.add(object()) not in handles  # a closed handle is never issued again


def test_handles_churned_in_a_loop_never_repeat_and_differ_between_requests():
    """Open/free 200k objects (a sampler_new/sampler_free loop): every handle is new, none is kept."""
    table, other = HandleTable(), HandleTable()
    seen = []
    for _ in range(200_000):
        seen.append(table.add(object()))
        table.remove(seen[-1], object)
    assert len(set(seen)) == len(seen) and all(0 < h < 2**31 for h in seen)
    assert table.count(object) == 0
    assert [other.add(object()) for _ in range(5)] != seen[:5]  # each request has its own key


def test_a_handle_of_one_kind_is_not_a_handle_of_another():
    table = HandleTable()
    handle = table.add("a string, not a list")
    with pytest.raises(AbiError) as err:
        table.get(handle, list)
    assert err.value.status == Status.BAD_HANDLE


def test_sampling_params_come_from_the_known_keys_of_a_json_object():
    params = sampling_params_from_json(b'{"prompt": "x", "temperature": 0.5, "top_k": 3, "stop": ["a"], "seed": 9}')
    assert (params.temperature, params.top_k, params.stop, params.seed) == (0.5, 3, ("a",), 9)


@pytest.mark.parametrize("text", [b"not json", b"[1, 2]", b'{"temperature": "hot"}', b'{"top_p": 2}',
                                  b'{"top_k": 1.5}', b"\xff"])
def test_bad_sampling_params_are_invalid_argument(text):
    with pytest.raises(AbiError) as err:
        sampling_params_from_json(text)
    assert err.value.status == Status.INVALID_ARGUMENT


@pytest.mark.parametrize("field", ["memory_bytes", "fuel", "wall_seconds", "max_tokens", "max_sequences"])
def test_limits_must_be_positive(field):
    with pytest.raises(GuestError, match=field):
        Limits(**{field: 0}).validate()


@pytest.mark.parametrize("field,value,message", [
    ("wall_seconds", float("inf"), "finite"), ("wall_seconds", float("nan"), "finite"),
    ("max_tokens", 1.5, "integer"), ("fuel", 1e9, "integer"), ("max_sequences", True, "number"),
    ("fuel", 2**63, "in \\[1, "), ("max_context", 2**31, "in \\[1, "), ("wall_seconds", 10**7, "604800"),
    ("fuel", 10**30, "more than 24 digits")])
def test_limits_are_finite_in_range_and_integers_where_they_count(field, value, message):
    with pytest.raises(GuestError, match=f"limit {field} must be .*{message}"):
        Limits(**{field: value}).validate()


def test_memory_limit_cannot_exceed_what_i32_pointers_address():
    with pytest.raises(GuestError, match="2 GiB"):
        Limits(memory_bytes=2**31 + 65536).validate()
