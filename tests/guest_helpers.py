"""Build small WAT guests for the sandbox tests, and read what they emit.

`wat_guest(body)` wraps a realm_main body in a module that imports every host function (as
`$name`), exports one page of memory, a bump allocator and realm_main(`$req`, `$len`), and
provides `$hex` (emit an i32 as 8 hex digits) and `$expect` (return `code` from realm_main
unless a value equals what is expected).
Memory map: bytes 0..64 scratch for $hex, 64..1024 free for tests, the heap from 4096.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from host_functions.abi import HOST_FUNCTIONS
from realm.sandbox.intake import GuestModule, compile_guest

DATA = Path(__file__).parent / "data"
TINY_LLAMA = DATA / "tiny-llama-F32.gguf"


def imports() -> str:
    """WAT imports of every host function with its ABI signature (all i32 -> i32)."""
    return "\n".join(
        f'(import "realm" "{f.name}" (func ${f.name} (param{" i32" * len(f.params)}) (result i32)))'
        for f in HOST_FUNCTIONS.values())


PRELUDE = """
  (global $heap (mut i32) (i32.const 4096))
  (func (export "realm_alloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (i32.and (i32.add (local.get $n) (i32.const 15)) (i32.const -16))))
    (block $ok
      (br_if $ok (i32.le_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
      (br_if $ok (i32.ne (memory.grow (i32.add (i32.shr_u (i32.sub (global.get $heap)
          (i32.mul (memory.size) (i32.const 65536))) (i32.const 16)) (i32.const 1))) (i32.const -1)))
      (return (i32.const 0)))
    (local.get $p))
  (func $hex (param $v i32) (local $i i32) (local $d i32)
    (loop $next
      (local.set $d (i32.and (i32.shr_u (local.get $v) (i32.sub (i32.const 28) (i32.shl (local.get $i) (i32.const 2))))
                             (i32.const 15)))
      (i32.store8 (local.get $i) (i32.add (local.get $d)
        (select (i32.const 48) (i32.const 87) (i32.lt_u (local.get $d) (i32.const 10)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $next (i32.lt_u (local.get $i) (i32.const 8))))
    (drop (call $emit (i32.const 0) (i32.const 8))))
"""


def wat_guest(body: str, pages: int = 1, extra: str = "", max_pages: int | None = None) -> str:
    """A complete guest module whose realm_main runs `body` (which must leave an i32 status)."""
    limit = f" {max_pages}" if max_pages is not None else ""
    return f"""(module
  {imports()}
  (memory (export "memory") {pages}{limit})
  {PRELUDE}
  {extra}
  (func (export "realm_main") (param $req i32) (param $len i32) (result i32)
    (local $a i32) (local $b i32) (local $c i32) (local $i i32) (local $s i32)
    {body}))"""


def compile_wat(body: str, **kwargs: object) -> GuestModule:
    return compile_guest(wat_guest(body, **kwargs).encode())  # type: ignore[arg-type]


def expect(value: str, wanted: str, code: int) -> str:
    """WAT that makes realm_main return `code` unless value == wanted (both i32 expressions)."""
    return f"(if (i32.ne {value} {wanted}) (then (return (i32.const {code}))))"


def prefill(n_tokens: int, seq: str = "$s", n_layers: int = 2) -> str:
    """WAT: open sequence `seq`, append n_tokens ids from address 64, run every layer and finish."""
    layer_calls = "\n".join(f"(drop (call $forward_layer (local.get {seq}) (i32.const {i})))" for i in range(n_layers))
    return f"""(local.set {seq} (call $seq_open (i32.const 0)))
      (drop (call $seq_append (local.get {seq}) (i32.const 64) (i32.const {n_tokens})))
      {layer_calls}
      (drop (call $seq_finish (local.get {seq})))"""


def hex_dump(count: str, *addresses: int) -> str:
    """WAT that emits, for i in 0..count (a WAT i32 expression), the i32 at each address + 4i as hex.

    Uses the guest's local $i; the loop body runs at least once.
    """
    loads = "\n".join(f"(call $hex (i32.load (i32.add (i32.const {a}) (i32.shl (local.get $i) (i32.const 2)))))"
                      for a in addresses)
    return f"""(local.set $i (i32.const 0))
      (loop $dump
        {loads}
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $dump (i32.lt_s (local.get $i) {count})))"""


def data_bytes(raw: bytes, at: int) -> str:
    """A data segment that stores `raw` at address `at`."""
    escaped = "".join(f"\\{b:02x}" for b in raw)
    return f'(data (i32.const {at}) "{escaped}")'


def data_i32(values: list[int] | np.ndarray, at: int) -> str:
    """A data segment that stores little-endian i32 values at address `at`."""
    return data_bytes(np.asarray(values, "<i4").tobytes(), at)


def hex_words(text: str) -> list[int]:
    """The i32 values a guest emitted with $hex."""
    assert len(text) % 8 == 0, text
    return [int(text[i:i + 8], 16) for i in range(0, len(text), 8)]


def hex_floats(text: str) -> np.ndarray:
    """The f32 values a guest emitted with $hex(i32.reinterpret_f32 ...)."""
    return np.array([struct.unpack("<f", struct.pack("<I", w))[0] for w in hex_words(text)], np.float32)
