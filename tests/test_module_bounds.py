"""Modules are bounded at deploy: measured before compiling, compiled in a worker under a budget, kept
compiled on disk, and limited to the WebAssembly features the ABI needs. A refused module leaves the
tenant serving its old one."""

from __future__ import annotations

import pytest
import wasmtime
from guest_helpers import TINY_LLAMA, wat_guest

from host_functions.abi import Limits
from host_functions.engine.model import Model
from host_functions.errors import GuestError
from realm.sandbox import compiler, intake, module_bounds
from realm.sandbox.intake import compile_guest, reference_guest_path
from realm.sandbox.run import TenantSandbox
from realm.tenants import TenantRegistry

GOOD_REQUEST = {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}


@pytest.fixture(scope="module")
def model() -> Model:
    return Model.load(TINY_LLAMA, backend="numpy")


def guest_with(extra: str = "", body: str = "(i32.const 0)") -> bytes:
    return wat_guest(body, extra=extra).encode()


def over(limit: int) -> int:
    return limit + 1


BOUNDS = {
    "functions": (guest_with("(func)" * over(module_bounds.MAX_FUNCTIONS)), "functions, over the limit of 10000"),
    "exports": (guest_with("".join(f'(func (export "f{i}"))' for i in range(over(module_bounds.MAX_EXPORTS)))),
                "exports, over the limit of 64"),
    "locals": (guest_with(f"(func (local{' i32' * over(module_bounds.MAX_LOCALS)}))"), "declares over 4096 locals"),
    "nesting": (guest_with("(func " + "(block " * over(module_bounds.MAX_NESTING)
                           + ")" * over(module_bounds.MAX_NESTING) + ")"), "nests blocks over 1024 deep"),
    "function size": (guest_with("(func " + "(drop (i32.const 0))" * (module_bounds.MAX_FUNCTION_BYTES // 3) + ")"),
                      "bytes, over the limit of 262144"),
    "globals": (guest_with("(global i32 (i32.const 0))" * over(module_bounds.MAX_ENTRIES)), "globals, over the limit"),
    "WASI import": (b'(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32) (result i32))))',
                    "import wasi_snapshot_preview1.fd_write: guests may import only from module 'realm'"),
    # features a guest does not need are switched off in the engine
    "GC": (b'(module (type $t (struct (field i32))) (func (result (ref null $t)) (struct.new $t (i32.const 1))))',
           "instruction 0xFB"),
    "exceptions": (b"(module (tag $e) (func (throw $e)))", "does not compile|instruction 0x08"),
    "a second memory": (b'(module (memory 1) (memory (export "memory") 1))', "2 memories, over the limit of 1"),
    "shared memory": (b"(module (memory 1 1 shared))", "threads must be enabled"),
    "memory64": (b"(module (memory i64 1))", "memory64 must be enabled"),
    "a component": (b"\0asm\x0d\x00\x01\x00", "components are not supported"),
}


@pytest.mark.parametrize("name", BOUNDS)
def test_a_module_over_a_bound_is_refused_at_deploy_and_the_old_module_keeps_serving(model, name):
    module, message = BOUNDS[name]
    registry = TenantRegistry()
    registry.create("t")
    registry.deploy("t", reference_guest_path().read_bytes())
    with pytest.raises(GuestError, match=message):
        registry.deploy("t", module)
    assert TenantSandbox(model).run(registry.guest("t"), GOOD_REQUEST).text


def test_modules_at_the_bounds_are_fine(model):
    """The bounds are limits, not traps for ordinary guests: 64 exports, deep-ish nesting, many locals."""
    extra = ("".join(f'(func (export "f{i}"))' for i in range(module_bounds.MAX_EXPORTS - 3))
             + f"(func (local{' i32' * module_bounds.MAX_LOCALS}))"
             + "(func " + "(block " * module_bounds.MAX_NESTING + ")" * module_bounds.MAX_NESTING + ")")
    shape = module_bounds.measure(bytes(wasmtime.wat2wasm(guest_with(extra).decode())), "realm")
    assert (shape.exports, shape.max_locals, shape.max_nesting) == (64, 4096, 1024)
    assert TenantSandbox(model).run(compile_guest(guest_with(extra)), {}).status == 0


def test_the_reference_guests_are_well_inside_the_bounds():
    for name in ("generate", "choice"):
        shape = module_bounds.measure(reference_guest_path(name).read_bytes(), "realm")
        assert shape.functions < 100 and shape.exports == 3 and shape.max_nesting < 64


def test_a_compile_over_the_workers_memory_budget_is_refused(monkeypatch):
    """The worker runs under RLIMIT_AS: with too little address space the compile fails, the host does not."""
    monkeypatch.setattr(compiler, "COMPILE_MEMORY_BYTES", 32 << 20)
    with pytest.raises(GuestError, match="needs more than 32 MiB of memory"):
        compile_guest(guest_with("(func (drop (i32.const 7)))"))


def test_a_compiled_module_is_kept_on_disk_and_never_compiled_again(model, monkeypatch):
    source = guest_with("(func (drop (i32.const 11)))")
    first = compile_guest(source)
    path = compiler.compiled_path(first.sha256)
    assert path.is_file()
    intake._modules.clear()  # a new process: only the disk cache is left
    # Any compile would now fail (no address space for the worker): the module comes from the disk.
    monkeypatch.setattr(compiler, "COMPILE_MEMORY_BYTES", 16 << 20)
    again = compile_guest(source)
    assert again is not first and again.sha256 == first.sha256
    assert TenantSandbox(model).run(again, {}).status == 0


def test_a_damaged_compiled_module_is_compiled_again_not_loaded(model):
    source = guest_with("(func (drop (i32.const 12)))")
    path = compiler.compiled_path(compile_guest(source).sha256)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    intake._modules.clear()
    assert TenantSandbox(model).run(compile_guest(source), {}).status == 0
    assert path.read_bytes() != bytes(data)  # rewritten


@pytest.mark.parametrize("prefix", [";; a guest\n", "(; block comment ;)\n", "\n\t ;; one\n;; two\n"])
def test_wat_text_may_start_with_comments(model, prefix):
    assert TenantSandbox(model).run(compile_guest((prefix + wat_guest("(i32.const 0)")).encode()), {}).status == 0


def test_text_that_is_not_wat_is_refused_with_a_reason():
    with pytest.raises(GuestError, match="neither binary nor WAT"):
        compile_guest(b";; only a comment\nhello")


def test_a_request_whose_wall_clock_passes_inside_its_last_host_call_never_reports_success(model):
    """tokenize of 12k characters takes tens of milliseconds, under one tokenizer interrupt interval;
    the request's limit passes inside it, and realm_main then returns OK: the check on return ends it."""
    n = 12_000
    body = f"""(memory.fill (i32.const 65536) (i32.const 97) (i32.const {n}))
      (drop (call $tokenize (i32.const 65536) (i32.const {n}) (i32.const 0) (i32.const 0) (i32.const 0)))
      (i32.const 0)"""
    guest = compile_guest(wat_guest(body, pages=2).encode())
    with pytest.raises(GuestError, match="wall-clock limit of 0.005 s"):
        TenantSandbox(model, Limits(wall_seconds=0.005)).run(guest, {})
