"""The two adapter file formats: llama.cpp's GGUF adapters and PEFT folders, read in two steps.

`open_adapter` first reads what the files declare (each tensor's name, shape and type; alpha) from
their headers alone; lora.adapter checks that against the model (targets, ranks, shapes, the scale
alpha gives) and only then asks for the matrices (`DeclaredAdapter.matrices`), so a file that
declares a wrong rank is refused before a byte of it is decoded (docs/file_checks.md).

A GGUF adapter holds `blk.{i}.{name}.weight.lora_a` / `.lora_b` tensors and `adapter.lora.alpha`. A
PEFT folder holds adapter_config.json (rank, alpha, options) and adapter_model.safetensors, under
Hugging Face module names (`...layers.3.self_attn.q_proj.lora_A.weight`), which the structure table
maps to GGUF names (arch.layout: Matrix.peft). For the architectures whose Q and K rows llama.cpp's
converter permutes (its rope layout; `permuted_qk`), the B matrices of q and k are permuted the same way.

The files are untrusted: only those two names are opened in a folder, never through a symbolic link
(formats.untrusted); the JSON config and the safetensors header are read up to a bound, every field
checked. Errors name the adapter by the name the caller gives, never by a host path.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import struct
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeGuard

import numpy as np

from host_functions.arch.config import ModelConfig
from host_functions.arch.layout import weight_name
from host_functions.errors import AdapterError, ModelFormatError, UnsupportedError
from host_functions.formats import json_text, untrusted
from host_functions.formats.gguf_file import PACKED_MIN, raw_tensor
from host_functions.formats.gguf_header import ADAPTER_LIMITS, read_header
from host_functions.formats.quants import dequantize, quant_format

MAX_RANK = 64
MAX_CONFIG_BYTES = 1 << 20  # adapter_config.json (PEFT writes about 1 kB)
MAX_SAFETENSORS_HEADER = 16 << 20  # its JSON header (a few hundred bytes per tensor)
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_PEFT_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.default)?\.weight$")
_PEFT_FILES = {CONFIG: "", WEIGHTS: " (pickled adapter_model.bin is not read)"}
_SAFETENSORS_DTYPES = {"F16": 2, "F32": 4, "F64": 8}  # what NumPy reads

Shapes = dict[str, dict[str, tuple[int, ...]]]  # base weight name -> "a" / "b" -> declared shape
Matrices = dict[str, dict[str, np.ndarray]]  # base weight name -> "a" / "b" -> float32 matrix


@dataclass
class DeclaredAdapter:
    """What an adapter's files declare, read from their headers: nothing decoded (or hashed) yet."""

    alpha: float
    shapes: Shapes
    digest: Callable[[], str]  # the content's SHA-256 (its identity), read once the shapes are checked
    matrices: Callable[[], Matrices]  # decoded once the shapes are checked; raises AdapterError


@contextmanager
def open_adapter(path: Path, config: ModelConfig, name: str) -> Iterator[DeclaredAdapter]:
    """The GGUF adapter file or PEFT folder at `path`, made for `config`'s architecture, as declared;
    the files opened stay open until the block ends, and are the ones hashed and decoded. Raises
    AdapterError naming it `name`."""
    if path.is_dir() and not path.is_symlink():  # a link, to a folder or not, is refused as a file
        with _peft_files(path, name) as (config_bytes, weights):
            yield _declared_peft(name, config_bytes, weights, config)
    else:
        with _gguf_file(path, name) as f:
            yield _declared_gguf(f, config, name)


def check_gguf_adapter(path: Path, name: str) -> None:
    """AdapterError unless the file at `path` (not a symbolic link) is a GGUF LoRA adapter whose
    header is sound (its tensors are checked against a model when one loads it)."""
    with _gguf_file(path, name) as f:
        _gguf_adapter_header(f, name)


def check_peft_folder(folder: Path, name: str) -> None:
    """AdapterError unless the folder holds a PEFT LoRA adapter's two files: a valid config and a
    safetensors file whose header is sound (its tensors are checked against a model when one loads it)."""
    with _peft_files(folder, name) as (config_bytes, weights):
        peft_config(name, config_bytes)
        _safetensors_header(name, weights)


# -- GGUF adapters ------------------------------------------------------------------------------


@contextmanager
def _gguf_file(path: Path, name: str) -> Iterator[BinaryIO]:
    try:
        f = untrusted.open_file(path)
    except OSError as exc:
        raise AdapterError(untrusted.reason(exc), name) from None
    with f:
        yield f


def _gguf_adapter_header(f: BinaryIO, name: str) -> dict[str, Any]:
    """The header of a GGUF LoRA adapter, read (not mapped: the tenant may truncate the file under a
    mapping, which would kill the process) within an adapter's limits."""
    size = untrusted.size_of(f)
    head = f.read(min(size, ADAPTER_LIMITS.header_bytes))
    if len(head) < min(size, ADAPTER_LIMITS.header_bytes):
        size = len(head)  # cut while read: what was read is the file
    try:
        header = read_header(head, size, PACKED_MIN, ADAPTER_LIMITS)
    except ModelFormatError as exc:
        raise AdapterError(str(exc), name) from None
    kind, adapter_type = header["metadata"].get("general.type"), header["metadata"].get("adapter.type")
    if kind != "adapter" or adapter_type != "lora":
        raise AdapterError(f"not a LoRA adapter (general.type={kind!r}, adapter.type={adapter_type!r})", name)
    return header


def _declared_gguf(f: BinaryIO, config: ModelConfig, name: str) -> DeclaredAdapter:
    header = _gguf_adapter_header(f, name)
    metadata, entries = header["metadata"], header["tensors"]
    arch = metadata.get("general.architecture")
    if arch != config.arch:
        raise AdapterError(f"made for architecture {arch!r}, the model is {config.arch!r}", name)
    alpha = _alpha(name, metadata.get("adapter.lora.alpha", 0.0))
    shapes: Shapes = {}
    for tname, qtype, shape, _, _ in entries:
        base, dot, half = tname.rpartition(".")
        if not dot or half not in ("lora_a", "lora_b"):
            raise AdapterError(f"tensor {tname} is not a lora_a/lora_b tensor", name)
        try:
            quant_format(qtype, tname)
        except UnsupportedError as exc:
            raise AdapterError(str(exc), name) from None
        shapes.setdefault(base, {})[half[-1]] = tuple(shape)
    data_end = max((offset + nbytes for _, _, _, offset, nbytes in entries), default=0)

    @functools.cache
    def data() -> np.ndarray:  # read once its shapes are checked: at most what they allow
        f.seek(0)
        blob = f.read(data_end)
        if len(blob) < data_end:
            raise AdapterError("the file was truncated while it was read", name)
        return np.frombuffer(blob, np.uint8)

    def decode() -> Matrices:
        tensors = [raw_tensor(data(), *entry) for entry in entries]
        halves: Matrices = {}
        for t in tensors:
            base, _, half = t.name.rpartition(".")
            halves.setdefault(base, {})[half[-1]] = dequantize(t)
        return halves

    return DeclaredAdapter(alpha, shapes, lambda: hashlib.sha256(data().data).hexdigest(), decode)


# -- PEFT folders -------------------------------------------------------------------------------


@contextmanager
def _peft_files(folder: Path, name: str) -> Iterator[tuple[bytes, BinaryIO]]:
    """adapter_config.json's bytes and adapter_model.safetensors open, both directly in `folder`."""
    with ExitStack() as stack:
        try:
            fd = stack.enter_context(untrusted.folder(folder))
        except OSError as exc:
            raise AdapterError(f"the folder {untrusted.reason(exc)}", name) from None
        files = {needed: stack.enter_context(_open_in(fd, needed, note, name)) for needed, note in _PEFT_FILES.items()}
        try:
            config_bytes = untrusted.read_bounded(files[CONFIG], MAX_CONFIG_BYTES)
        except OSError as exc:
            raise AdapterError(f"{CONFIG} {untrusted.reason(exc)}", name) from None
        yield config_bytes, files[WEIGHTS]


def _open_in(fd: int, needed: str, note: str, name: str) -> BinaryIO:
    try:
        return untrusted.open_in(fd, needed)
    except FileNotFoundError:
        raise AdapterError(f"a PEFT folder needs {needed}{note}", name) from None
    except OSError as exc:
        raise AdapterError(f"{needed} {untrusted.reason(exc)}", name) from None


def peft_config(name: str, raw: bytes) -> dict[str, Any]:
    """adapter_config.json, refused unless it is a JSON object describing a plain LoRA adapter with
    valid fields; raises AdapterError."""
    try:
        peft = json_text.loads(raw.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError, JSONDecodeError, too deep
        raise AdapterError(f"{CONFIG} is not JSON ({_reason(exc)})", name) from None
    if not isinstance(peft, dict):
        raise AdapterError(f"{CONFIG} is not a JSON object", name)
    if not isinstance(peft.get("peft_type", "LORA"), str) or peft.get("peft_type", "LORA").upper() != "LORA":
        raise AdapterError(f"{CONFIG} is not a LoRA config", name)
    rank = peft.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= MAX_RANK:
        raise AdapterError(f"{CONFIG}: r must be a rank in 1..{MAX_RANK}, got {_shown(rank)}", name)
    for flag in ("use_rslora", "use_dora", "fan_in_fan_out"):
        if not isinstance(peft.get(flag, False), bool):
            raise AdapterError(f"{CONFIG}: {flag} must be true or false", name)
    for unsupported in ("use_dora", "fan_in_fan_out"):
        if peft.get(unsupported):
            raise AdapterError(f"{unsupported} adapters are not supported", name)
    for per_module in ("modules_to_save", "rank_pattern", "alpha_pattern"):
        if peft.get(per_module):
            raise AdapterError(f"{per_module} is not supported", name)
    peft["lora_alpha"] = _alpha(name, peft.get("lora_alpha", rank))
    return peft


def _declared_peft(name: str, config_bytes: bytes, weights: BinaryIO, config: ModelConfig) -> DeclaredAdapter:
    peft = peft_config(name, config_bytes)
    alpha = peft["lora_alpha"]
    if peft.get("use_rslora"):
        alpha *= math.sqrt(peft["r"])  # rsLoRA scales by alpha / sqrt(r): the same factor over r
    layout = config.layout
    places: dict[str, tuple[str, str, int]] = {}  # safetensors key -> (base weight, half, heads to permute or 0)
    shapes: Shapes = {}
    for key, shape in _safetensors_header(name, weights).items():
        m = _PEFT_KEY.search(key)
        matrix = None if m is None else layout.matrix_by_peft(m[2])
        if m is None or matrix is None or matrix.name not in layout.lora_targets:
            raise AdapterError(f"tensor {_short(key)} is not a LoRA pair of an attention or FFN projection "
                               f"({', '.join(layout.lora_peft_modules)})", name)
        base, half = weight_name(int(m[1]), matrix.name), m[3].lower()
        permuted = half == "b" and layout.permuted_qk and matrix.holds in (("q",), ("k",))
        places[key] = base, half, (config.n_head if matrix.holds == ("q",) else config.n_head_kv) if permuted else 0
        if half in shapes.setdefault(base, {}):
            raise AdapterError(f"two tensors hold {base}'s lora_{half} (one is {_short(key)})", name)
        shapes[base][half] = shape

    def decode() -> Matrices:
        halves: Matrices = {}
        for key, value in _safetensors_tensors(name, weights).items():
            base, half, heads = places[key]
            halves.setdefault(base, {})[half] = _permuted_rows(value, heads) if heads else value
        return halves

    return DeclaredAdapter(alpha, shapes, lambda: _digest(weights, config_bytes), decode)


def _safetensors_header(name: str, f: BinaryIO) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape from a safetensors file's header, which must be sound: bounded, a JSON
    object of entries with a NumPy-readable dtype, a shape, and data offsets inside the file that hold
    exactly dtype x shape bytes, none overlapping."""
    size = untrusted.size_of(f)
    f.seek(0)
    head = f.read(8)
    n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
    if not 0 < n <= min(MAX_SAFETENSORS_HEADER, size - 8):
        raise AdapterError(f"{WEIGHTS} declares a header of {n} bytes in a file of {size} (at most "
                           f"{MAX_SAFETENSORS_HEADER})", name)
    try:
        header = json_text.loads(f.read(n).decode("utf-8"))
    except ValueError as exc:
        raise AdapterError(f"{WEIGHTS} has a header that is not JSON ({_reason(exc)})", name) from None
    if not isinstance(header, dict):
        raise AdapterError(f"{WEIGHTS} has a header that is not a JSON object", name)
    header.pop("__metadata__", None)
    spans: list[tuple[int, int, str]] = []
    shapes: dict[str, tuple[int, ...]] = {}
    for key, entry in header.items():
        try:
            shapes[key], start, end = _tensor_entry(key, entry, size - 8 - n)
        except ValueError as exc:
            raise AdapterError(f"{WEIGHTS}: {exc}", name) from None
        spans.append((start, end, key))
    # As the format requires, the tensors cover the data exactly, one after another: the file is no
    # larger than its tensors, so reading it whole reads no more than their (checked) shapes allow.
    end, before = 0, "the header"
    for start, stop, key in sorted(spans):
        if start != end:
            raise AdapterError(f"{WEIGHTS}: tensor {_short(key)} starts at {start}, not where {_short(before)} "
                               f"ends ({end}): a gap or an overlap", name)
        end, before = stop, key
    if end != size - 8 - n:
        raise AdapterError(f"{WEIGHTS} has {size - 8 - n - end} bytes after its last tensor", name)
    return shapes


def _tensor_entry(key: str, entry: object, data_bytes: int) -> tuple[tuple[int, ...], int, int]:
    """(shape, start, end) of one safetensors header entry; ValueError saying what is wrong."""
    dtype = entry.get("dtype") if isinstance(entry, dict) else None
    if not isinstance(entry, dict) or dtype not in _SAFETENSORS_DTYPES:
        raise ValueError(f"tensor {_short(key)} has dtype {_shown(dtype)}: adapters in "
                         f"{', '.join(_SAFETENSORS_DTYPES)} are read")
    shape, span = entry.get("shape"), entry.get("data_offsets")
    if not (_ints(shape) and len(shape) <= 4 and _ints(span) and len(span) == 2
            and span[0] <= span[1] <= data_bytes):
        raise ValueError(f"tensor {_short(key)} has no valid shape and data_offsets within the file")
    if span[1] - span[0] != math.prod(shape) * _SAFETENSORS_DTYPES[dtype]:
        raise ValueError(f"tensor {_short(key)}: {dtype} {shape} is not the {span[1] - span[0]} bytes of its "
                         f"data_offsets")
    return tuple(shape), span[0], span[1]


def _safetensors_tensors(name: str, f: BinaryIO) -> dict[str, np.ndarray]:
    """Every tensor as float32 (the header was checked: the file is as large as its tensors say)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    f.seek(0)
    try:
        return {k: np.asarray(v, np.float32) for k, v in load(f.read()).items()}
    except (SafetensorError, ValueError, TypeError) as exc:
        raise AdapterError(f"{WEIGHTS} is unreadable: {exc}", name) from None


def _permuted_rows(b: np.ndarray, heads: int) -> np.ndarray:
    """B's rows reordered as llama.cpp's converter reorders a Q or K weight's rows (per head, the two
    rope halves interleaved); a matrix of another shape (refused before it is decoded) is left as it is."""
    if b.ndim != 2 or b.shape[0] % (2 * heads):
        return b
    return np.ascontiguousarray(b.reshape(heads, 2, b.shape[0] // heads // 2, b.shape[1]).swapaxes(1, 2)
                                .reshape(b.shape))


# -- shared -------------------------------------------------------------------------------------


def _alpha(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise AdapterError(f"alpha must be a finite number >= 0, got {_shown(value)}", name)
    return float(value)


def _ints(value: object) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def _short(text: str) -> str:
    return text if len(text) <= 100 else text[:100] + "..."


def _shown(value: object) -> str:
    return repr(value)[:40] if isinstance(value, (str, int, float, type(None))) else f"a JSON {type(value).__name__}"


def _digest(f: BinaryIO, *prefix: bytes) -> str:
    h = hashlib.sha256()
    for part in prefix:
        h.update(part)
    f.seek(0)
    while chunk := f.read(1 << 20):
        h.update(chunk)
    f.seek(0)
    return h.hexdigest()


def _reason(exc: ValueError) -> str:
    """Why text is not JSON, briefly: the error's class, or the depth it passed."""
    return str(exc) if type(exc) is ValueError else type(exc).__name__
