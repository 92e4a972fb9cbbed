"""Static bounds on a guest module, read from its binary sections before anything compiles it.

Compiling is the one piece of host work a module controls before any limit of a request applies:
a million empty functions, deeply nested blocks or huge local counts make Cranelift take
gigabytes and minutes. So a module is measured first, with a small reader of the WebAssembly
binary format (LEB128 numbers, section headers, function bodies decoded one instruction at a
time to follow block nesting), and refused with a GuestError naming the bound it exceeds. The
compile itself then still runs in a worker under a memory and CPU budget (realm.sandbox.compiler).
"""

from __future__ import annotations

from dataclasses import dataclass

from host_functions.errors import GuestError

MAX_FUNCTIONS = 10_000  # defined functions (a C guest with its helpers has tens to hundreds)
MAX_FUNCTION_BYTES = 256 << 10  # one function body
MAX_CODE_BYTES = 4 << 20  # all function bodies
MAX_LOCALS = 4096  # locals declared by one function
MAX_NESTING = 1024  # blocks, loops and ifs open at once (a C switch of n cases nests n blocks)
MAX_EXPORTS = 64  # the ABI needs three
MAX_IMPORTS = 256  # each one a host function of module `realm`; duplicates are allowed, not without end

MAX_ENTRIES = 10_000  # types, globals, element and data segments: each costs compile and instantiate work

_SECTION_IMPORT, _SECTION_FUNCTION, _SECTION_EXPORT, _SECTION_CODE = 2, 3, 7, 10
# Sections whose entries are only counted: id -> (what, limit). A guest has one memory, and tables
# beyond the store's limit of 4 would not instantiate.
_COUNTED = {1: ("types", MAX_ENTRIES), 4: ("tables", 4), 5: ("memories", 1), 6: ("globals", MAX_ENTRIES),
            9: ("element segments", MAX_ENTRIES), 11: ("data segments", MAX_ENTRIES)}

# Immediates of each one-byte opcode. Kinds: "block" a block type, "mem" a memarg (+ "b": a lane
# byte), "table" br_table's vector plus default, "types" select's value types, "4"/"8"/"16" raw
# bytes, else a sequence of "u"/"s" (LEB128 numbers) and "b" (one byte).
_IMMEDIATES: dict[int, str] = {
    0x02: "block", 0x03: "block", 0x04: "block", 0x0C: "u", 0x0D: "u", 0x0E: "table", 0x10: "u", 0x11: "uu",
    0x12: "u", 0x13: "uu", 0x1C: "types", 0x20: "u", 0x21: "u", 0x22: "u", 0x23: "u", 0x24: "u", 0x25: "u",
    0x26: "u", 0x3F: "u", 0x40: "u", 0x41: "s", 0x42: "s", 0x43: "4", 0x44: "8", 0xD0: "b", 0xD2: "u",
    **{op: "mem" for op in range(0x28, 0x3F)},
}
# Opcodes without immediates: control, parametric, numeric (0x45..0xC4 incl. sign extension), refs.
_PLAIN = frozenset((0x00, 0x01, 0x05, 0x0B, 0x0F, 0x1A, 0x1B, 0xD1, *range(0x45, 0xC5)))
# 0xFC prefix (saturating truncation, bulk memory, tables): sub-opcode -> immediates.
_FC_IMMEDIATES = {**{op: "" for op in range(8)}, 8: "ub", 9: "u", 10: "bb", 11: "b", 12: "uu", 13: "u",
                  14: "uu", 15: "u", 16: "u", 17: "u"}


def _simd_immediates(op: int) -> str | None:
    """Immediates of 0xFD-prefixed (SIMD, relaxed SIMD) sub-opcodes; None for unknown ones."""
    if op <= 11 or op in (92, 93):
        return "mem"
    if op in (12, 13):
        return "16"
    if 21 <= op <= 34:
        return "b"
    if 84 <= op <= 91:
        return "memb"
    return "" if op <= 0x113 else None


@dataclass(frozen=True)
class ModuleShape:
    """What the reader measured: counts and the largest function, for messages and tests."""

    functions: int
    code_bytes: int
    imports: int
    exports: int
    max_locals: int
    max_nesting: int


class _Reader:
    """Bounds-checked reads of LEB128 numbers and bytes over a slice of the module."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data, self.pos, self.end = data, pos, len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise GuestError("module is truncated or malformed (read past the end of a section)")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.end:
            raise GuestError("module is truncated or malformed (a length runs past its section)")
        self.pos += n

    def uleb(self) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result
            shift += 7
            if shift > 63:
                raise GuestError("module is malformed (an over-long LEB128 number)")

    def sleb(self) -> None:
        self.uleb()  # skipped, never used: a signed LEB128 has the same length rules


def measure(wasm: bytes, import_module: str) -> ModuleShape:
    """Measure a WebAssembly binary module; GuestError if it is malformed, exceeds a bound above or
    imports from a module other than `import_module`."""
    if wasm[:4] != b"\0asm":
        raise GuestError("not a WebAssembly module")
    if wasm[4:8] != b"\1\0\0\0":
        raise GuestError("not a core WebAssembly module (version 1); components are not supported")
    r = _Reader(wasm, 8)
    functions = code_bytes = imports = exports = max_locals = max_nesting = 0
    while r.pos < r.end:
        section = r.byte()
        size = r.uleb()
        start = r.pos
        r.skip(size)
        body = _Reader(wasm, start, start + size)
        if section == _SECTION_IMPORT:
            imports = _imports(body, import_module)
        elif section == _SECTION_FUNCTION:
            functions = _count(body, MAX_FUNCTIONS, "functions")
        elif section == _SECTION_EXPORT:
            exports = _count(body, MAX_EXPORTS, "exports")
        elif section in _COUNTED:
            _count(body, *_COUNTED[section][::-1])
        elif section == _SECTION_CODE:
            code_bytes = size
            if size > MAX_CODE_BYTES:
                raise GuestError(f"module has {size} bytes of code, over the limit of {MAX_CODE_BYTES}")
            for k in range(_count(body, MAX_FUNCTIONS, "function bodies")):
                length = body.uleb()
                if length > MAX_FUNCTION_BYTES:
                    raise GuestError(f"function {k} is {length} bytes, over the limit of {MAX_FUNCTION_BYTES}")
                fn = _Reader(wasm, body.pos, body.pos + length)
                body.skip(length)
                max_locals = max(max_locals, _locals(fn, k))
                max_nesting = max(max_nesting, _nesting(fn, k))
    return ModuleShape(functions, code_bytes, imports, exports, max_locals, max_nesting)


def _count(r: _Reader, limit: int, what: str) -> int:
    """The count that opens a vector section; GuestError if over `limit`."""
    n = r.uleb()
    if n > limit:
        raise GuestError(f"module has {n} {what}, over the limit of {limit}")
    return n


def _imports(r: _Reader, import_module: str) -> int:
    """Count the imports; GuestError at the first one not from the host's module (WASI, env...)."""
    n = _count(r, MAX_IMPORTS, "imports")
    for _ in range(n):
        module, name = _name(r), _name(r)
        if module != import_module:
            raise GuestError(f"import {module}.{name}: guests may import only from module {import_module!r} (no WASI)")
        kind = r.byte()
        if kind in (0x00, 0x04):  # function: type index; tag: attribute + type index
            if kind == 0x04:
                r.byte()
            r.uleb()
        elif kind == 0x03:  # global: value type + mutability
            r.skip(2)
        else:  # table (reference type + limits) or memory (limits)
            if kind == 0x01:
                r.byte()
            flags = r.byte()
            r.uleb()
            if flags & 1:
                r.uleb()
    return n


def _name(r: _Reader) -> str:
    size = r.uleb()
    start = r.pos
    r.skip(size)
    return r.data[start:r.pos].decode("utf-8", "replace")


def _locals(fn: _Reader, k: int) -> int:
    total = 0
    for _ in range(fn.uleb()):
        total += fn.uleb()
        fn.byte()  # the value type
        if total > MAX_LOCALS:
            raise GuestError(f"function {k} declares over {MAX_LOCALS} locals")
    return total


def _nesting(fn: _Reader, k: int) -> int:
    """The deepest block nesting of one function body (its expression, after the locals)."""
    depth = deepest = 0
    while fn.pos < fn.end:
        op = fn.byte()
        if op in (0x02, 0x03, 0x04):
            depth += 1
            if depth > MAX_NESTING:
                raise GuestError(f"function {k} nests blocks over {MAX_NESTING} deep")
            deepest = max(deepest, depth)
        elif op == 0x0B:
            depth -= 1
        if op in _PLAIN:
            continue
        kind = _IMMEDIATES.get(op)
        if kind is None:
            if op == 0xFC:
                kind = _FC_IMMEDIATES.get(fn.uleb())
            elif op == 0xFD:
                kind = _simd_immediates(fn.uleb())
            if kind is None:
                raise GuestError(f"function {k} uses instruction 0x{op:02X}, which guests may not use")
        _skip_immediates(fn, kind)
    return deepest


def _skip_immediates(fn: _Reader, kind: str) -> None:
    if kind == "block":
        b = fn.data[fn.pos] if fn.pos < fn.end else 0
        if b == 0x40 or 0x6F <= b <= 0x7F:  # empty or a value type: one byte
            fn.byte()
        else:
            fn.sleb()  # a type index (s33)
    elif kind == "table":
        for _ in range(fn.uleb() + 1):
            fn.uleb()
    elif kind == "types":
        for _ in range(fn.uleb()):
            fn.byte()
    elif kind in ("mem", "memb"):
        if fn.uleb() & 0x40:  # the alignment's multi-memory bit: a memory index follows
            fn.uleb()
        fn.uleb()  # offset
        if kind == "memb":
            fn.byte()  # lane
    elif kind in _RAW_BYTES:
        fn.skip(_RAW_BYTES[kind])
    else:
        for part in kind:
            if part == "b":
                fn.byte()
            else:  # "u" or "s"
                fn.uleb()


_RAW_BYTES = {"4": 4, "8": 8, "16": 16}
