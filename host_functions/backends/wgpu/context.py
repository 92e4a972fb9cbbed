"""The process-wide WebGPU context: one adapter, one device, cached pipelines and buffer helpers.

Every WGSL kernel in Realm runs through `GPUContext`. Its API (all methods raise
`host_functions.errors.BackendError` on failure, never a raw wgpu exception):

    ctx = GPUContext.get()                  # singleton; BackendError if no adapter/device
    ctx.device, ctx.adapter_info            # the wgpu objects / info dict
    ctx.is_cpu_adapter                      # True on llvmpipe and other software drivers
    ctx.has_f16, ctx.has_subgroups          # device features that were enabled
    ctx.max_binding_size                    # bytes one storage binding may cover (llvmpipe: 128 MiB)

    pipe = ctx.pipeline("matmul.wgsl", "main", {"WG": 64})       # cached by PipelineKey
    pipe = ctx.pipeline(("dequant_q4_k.wgsl", "matmul.wgsl"), "main", {...}, enables=("subgroups",))

    buf = ctx.upload(np_array)              # STORAGE|COPY_SRC|COPY_DST, padded to 4 bytes
    buf = ctx.empty(nbytes)                 # zero-filled, same usage by default
    arr = ctx.read(buf, np.float32, (n, m)) # blocks until the GPU is done
    ctx.write(buf, np_array, offset=0)
    parts = ctx.split_rows(n_rows, row_bytes)   # [(start, stop)] each <= max_binding_size

    with ctx.recorder() as rec:             # one command encoder, one compute pass
        rec.dispatch(pipe, [w_buf, x_buf, (out_buf, 0, 4096), params_bytes], (groups_x, groups_y, 1))
        rec.copy(src, dst, nbytes)          # ends the pass, copies, reopens a pass
    # leaving the block submits; nothing is read back until ctx.read()

Shader sources: WGSL has no #include, so `pipeline()` builds the source in one place: the WGSL
`enable` directives, then `shaders/common.wgsl` (byte and f16 unpack helpers), then the named
files in order. Bindings are all in `@group(0)`: entry i of a dispatch's binding list is
`@binding(i)`; a GPUBuffer binds whole, a (buffer, offset, size) tuple binds a range, and a
`bytes` object becomes a uniform buffer with those contents (pooled by content, so the same
params across steps cost nothing). `uniforms=` is shorthand for appending one such entry.
Pipelines use the automatic layout, so every declared binding must be used by the entry point.

Why a singleton: wgpu adapters/devices are expensive (about a second on llvmpipe) and the
weights of every model are shared by all tenants, so the whole process shares one device.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from host_functions.errors import BackendError


def _shader_dir() -> Path:
    # Installed, the WGSL files are package data in host_functions/shaders/ (pyproject maps them there);
    # in a source tree they are shaders/ at the top, beside host_functions/.
    package = Path(__file__).resolve().parents[2]
    installed = package / "shaders"
    return installed if installed.is_dir() else package.parent / "shaders"


SHADER_DIR = _shader_dir()
COMMON_SHADER = "common.wgsl"

_STORAGE = 128 | 4 | 8  # wgpu.BufferUsage.STORAGE | COPY_SRC | COPY_DST (kept numeric: no import cost here)
_UNIFORM = 64 | 8       # UNIFORM | COPY_DST
_UNIFORM_POOL_SIZE = 4096

# WGSL text each `enables` entry adds. wgpu-native's naga (wgpu-py 0.32) rejects `enable subgroups;`
# ("not yet supported") and allows subgroup builtins whenever the device has the feature.
_ENABLE_DIRECTIVES = {"f16": "enable f16;\n", "subgroups": ""}

Binding = Any  # GPUBuffer | tuple[GPUBuffer, int, int] | bytes


@dataclass(frozen=True)
class PipelineKey:
    """Everything that makes two compute pipelines different; the pipeline cache key."""

    shaders: tuple[str, ...]
    entry: str
    constants: tuple[tuple[str, float | int | bool], ...]
    enables: tuple[str, ...]


def _quiet_window_system_probe() -> None:
    """Give the Vulkan loader a private runtime dir when there is none.

    Mesa's Wayland surface support prints "XDG_RUNTIME_DIR is invalid" to stderr on headless machines
    while the adapter is enumerated; compute never uses a window, so an empty private dir silences it.
    """
    if not os.environ.get("XDG_RUNTIME_DIR"):
        os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="realm-runtime-")


class GPUContext:
    """One wgpu adapter and device for the whole process; see the module docstring for the API."""

    _instance: ClassVar[GPUContext | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        wgpu = _import_wgpu()
        _quiet_window_system_probe()
        try:
            adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
        except Exception as exc:
            raise BackendError(f"no WebGPU adapter available ({_describe(exc)}); "
                               "install a Vulkan driver, e.g. mesa-vulkan-drivers for llvmpipe") from None
        if adapter is None:
            raise BackendError("no WebGPU adapter available; install a Vulkan driver "
                               "(e.g. mesa-vulkan-drivers for llvmpipe)")
        self.adapter = adapter
        self.adapter_info: dict[str, Any] = dict(adapter.info)
        wanted = [f for f in ("shader-f16", "subgroup") if f in adapter.features]
        limits = adapter.limits
        required_limits = {
            name: limits[name]
            for name in ("max-storage-buffer-binding-size", "max-buffer-size",
                         "max-storage-buffers-per-shader-stage", "max-compute-workgroup-storage-size",
                         "max-compute-invocations-per-workgroup", "max-compute-workgroup-size-x",
                         "max-compute-workgroups-per-dimension")
            if name in limits
        }
        try:
            self.device = adapter.request_device_sync(required_features=wanted, required_limits=required_limits)
        except Exception as exc:
            raise BackendError(f"could not create a WebGPU device on {self.adapter_name} ({_describe(exc)})") from None
        self.has_f16 = "shader-f16" in wanted
        self.has_subgroups = "subgroup" in wanted
        self.max_binding_size = int(self.device.limits["max-storage-buffer-binding-size"])
        self.max_workgroups_per_dim = int(self.device.limits["max-compute-workgroups-per-dimension"])
        self.storage_offset_alignment = int(self.device.limits["min-storage-buffer-offset-alignment"])
        self._pipelines: dict[PipelineKey, Any] = {}
        self._uniforms: OrderedDict[bytes, Any] = OrderedDict()
        self._sources: dict[str, str] = {}

    @classmethod
    def get(cls) -> GPUContext:
        """The process-wide context, created on first use. Raises BackendError if no GPU/driver."""
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    # ---- adapter facts -------------------------------------------------------------------------

    @property
    def adapter_name(self) -> str:
        return str(self.adapter_info.get("device") or self.adapter_info.get("description") or "unknown adapter")

    @property
    def is_cpu_adapter(self) -> bool:
        """True for software rasterizers (llvmpipe, SwiftShader, WARP): speed there is not GPU speed."""
        return str(self.adapter_info.get("adapter_type", "")).lower() == "cpu" or "llvmpipe" in self.adapter_name

    # ---- pipelines -----------------------------------------------------------------------------

    def pipeline(self, shaders: str | Sequence[str], entry: str = "main",
                 constants: Mapping[str, float | int | bool] | None = None,
                 enables: Sequence[str] = ()) -> Any:
        """A compute pipeline for `common.wgsl` + `shaders` (files in shaders/), cached by PipelineKey.

        `constants` specialize the shader's `override` declarations; `enables` are WGSL extensions
        ("f16", "subgroups") and raise BackendError when the device lacks them.
        """
        names = (shaders,) if isinstance(shaders, str) else tuple(shaders)
        key = PipelineKey(names, entry, tuple(sorted((constants or {}).items())), tuple(enables))
        cached = self._pipelines.get(key)
        if cached is None:
            cached = self._pipelines[key] = self._create_pipeline(key)
        return cached

    def shader_source(self, shaders: Sequence[str], enables: Sequence[str] = ()) -> str:
        """The full WGSL text a pipeline compiles: enables, common.wgsl, then `shaders` in order."""
        for ext in enables:
            if ext == "f16" and not self.has_f16:
                raise BackendError(f"{self.adapter_name} does not support WGSL f16 (shader-f16)")
            if ext == "subgroups" and not self.has_subgroups:
                raise BackendError(f"{self.adapter_name} does not support WGSL subgroups")
            if ext not in _ENABLE_DIRECTIVES:
                raise BackendError(f"unknown WGSL extension {ext!r}")
        header = "".join(_ENABLE_DIRECTIVES[ext] for ext in enables)
        return header + "\n".join(self._read_shader(name) for name in (COMMON_SHADER, *shaders))

    def _read_shader(self, name: str) -> str:
        if name not in self._sources:
            path = SHADER_DIR / name
            if not path.is_file():
                raise BackendError(f"shader file {path} is missing")
            self._sources[name] = path.read_text()
        return self._sources[name]

    def _create_pipeline(self, key: PipelineKey) -> Any:
        code = self.shader_source(key.shaders, key.enables)
        label = "+".join(key.shaders) + ":" + key.entry
        try:
            module = self.device.create_shader_module(label=label, code=code)
            return self.device.create_compute_pipeline(
                label=label, layout="auto",
                compute={"module": module, "entry_point": key.entry, "constants": dict(key.constants)},
            )
        except Exception as exc:
            constants = dict(key.constants)
            raise BackendError(f"could not build pipeline {label} with {constants}: {_describe(exc)}") from None

    # ---- buffers -------------------------------------------------------------------------------

    def upload(self, array: np.ndarray | bytes, usage: int = _STORAGE) -> Any:
        """A new buffer holding `array`'s bytes, zero-padded to a multiple of 4 bytes (at least 4)."""
        data = np.ascontiguousarray(array).reshape(-1).view(np.uint8) if isinstance(array, np.ndarray) \
            else np.frombuffer(array, dtype=np.uint8)
        padded = _pad4(data)
        try:
            return self.device.create_buffer_with_data(data=padded, usage=usage)
        except Exception as exc:
            raise BackendError(f"could not upload {data.nbytes} bytes to the GPU: {_describe(exc)}") from None

    def empty(self, nbytes: int, usage: int = _STORAGE) -> Any:
        """A new zero-filled buffer of at least `nbytes` (rounded up to a multiple of 4, at least 4)."""
        size = max(4, (int(nbytes) + 3) // 4 * 4)
        try:
            return self.device.create_buffer(size=size, usage=usage)
        except Exception as exc:
            raise BackendError(f"could not allocate {size} bytes on the GPU: {_describe(exc)}") from None

    def write(self, buffer: Any, array: np.ndarray | bytes, offset: int = 0) -> None:
        """Overwrite part of `buffer` with `array`'s bytes (queued; ordered before later submits)."""
        data = np.ascontiguousarray(array).reshape(-1).view(np.uint8) if isinstance(array, np.ndarray) \
            else np.frombuffer(array, dtype=np.uint8)
        self.device.queue.write_buffer(buffer, offset, _pad4(data))

    def read(self, buffer: Any, dtype: Any = np.float32, shape: Sequence[int] | None = None,
             offset: int = 0) -> np.ndarray:
        """Copy `prod(shape)` items of `dtype` at byte `offset` back to a new NumPy array (blocks)."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape)) if shape is not None else (buffer.size - offset) // dtype.itemsize
        nbytes = count * dtype.itemsize
        try:
            raw = self.device.queue.read_buffer(buffer, offset, (nbytes + 3) // 4 * 4)
        except Exception as exc:
            raise BackendError(f"could not read {nbytes} bytes back from the GPU: {_describe(exc)}") from None
        out = np.frombuffer(raw, dtype=np.uint8)[:nbytes].view(dtype).copy()
        return out.reshape(shape) if shape is not None else out

    def uniform(self, data: bytes) -> Any:
        """A uniform buffer holding `data`, shared by every dispatch with the same bytes."""
        buf = self._uniforms.get(data)
        if buf is None:
            buf = self.upload(data, usage=_UNIFORM)
            self._uniforms[data] = buf
            if len(self._uniforms) > _UNIFORM_POOL_SIZE:
                self._uniforms.popitem(last=False)
        else:
            self._uniforms.move_to_end(data)
        return buf

    def split_rows(self, n_rows: int, row_bytes: int, max_bytes: int | None = None) -> list[tuple[int, int]]:
        """Row ranges [(start, stop), ...] whose bytes (plus 4 bytes of padding) fit one binding.

        Tensors larger than `max_binding_size` (or `max_bytes`, for tests) are split by rows so each
        part is its own buffer and its own dispatch.
        """
        limit = (max_bytes or self.max_binding_size) - 4
        rows_per_part = limit // row_bytes
        if rows_per_part < 1:
            raise BackendError(f"one row of {row_bytes} bytes exceeds the GPU's binding limit of {limit} bytes")
        return [(s, min(s + rows_per_part, n_rows)) for s in range(0, n_rows, rows_per_part)]

    # ---- recording -----------------------------------------------------------------------------

    @contextmanager
    def recorder(self) -> Iterator[Recorder]:
        """Record dispatches into one command encoder; submitted when the block exits cleanly."""
        rec = Recorder(self)
        yield rec
        rec.submit()

    def dispatch(self, pipeline: Any, bindings: Sequence[Binding], workgroups: Sequence[int],
                 uniforms: bytes | None = None) -> None:
        """Record and submit a single dispatch (tests and one-off work; forwards use recorder())."""
        with self.recorder() as rec:
            rec.dispatch(pipeline, bindings, workgroups, uniforms)

    def bind_group(self, pipeline: Any, bindings: Sequence[Binding]) -> Any:
        """A bind group for @group(0) of `pipeline`: entry i is @binding(i) (see module docstring)."""
        entries = []
        for i, b in enumerate(bindings):
            if isinstance(b, (bytes, bytearray)):
                b = self.uniform(bytes(b))
            if isinstance(b, tuple):
                buf, offset, size = b
                resource = {"buffer": buf, "offset": int(offset), "size": int(size)}
            else:
                resource = {"buffer": b, "offset": 0, "size": b.size}
            entries.append({"binding": i, "resource": resource})
        try:
            return self.device.create_bind_group(layout=pipeline.get_bind_group_layout(0), entries=entries)
        except Exception as exc:
            raise BackendError(f"bad bindings for pipeline {pipeline.label}: {_describe(exc)}") from None


class Recorder:
    """One command encoder with an open compute pass; see GPUContext.recorder()."""

    def __init__(self, ctx: GPUContext) -> None:
        self.ctx = ctx
        self.encoder = ctx.device.create_command_encoder()
        self._pass: Any = None
        self.n_dispatches = 0

    def dispatch(self, pipeline: Any, bindings: Sequence[Binding], workgroups: Sequence[int],
                 uniforms: bytes | None = None) -> None:
        """Record one dispatch of `pipeline` over `workgroups` (x[, y[, z]]) with `bindings`."""
        groups = tuple(int(g) for g in workgroups) + (1,) * (3 - len(workgroups))
        if min(groups) < 1:
            return  # nothing to do (e.g. zero rows); wgpu would reject a zero-sized dispatch anyway
        limit = self.ctx.max_workgroups_per_dim
        if max(groups) > limit:
            raise BackendError(f"dispatch of {groups} workgroups exceeds the device limit of {limit} per dimension")
        all_bindings = list(bindings) + ([uniforms] if uniforms is not None else [])
        group = self.ctx.bind_group(pipeline, all_bindings)
        if self._pass is None:
            self._pass = self.encoder.begin_compute_pass()
        self._pass.set_pipeline(pipeline)
        self._pass.set_bind_group(0, group)
        self._pass.dispatch_workgroups(*groups)
        self.n_dispatches += 1

    def copy(self, src: Any, dst: Any, nbytes: int, src_offset: int = 0, dst_offset: int = 0) -> None:
        """Record a buffer-to-buffer copy (offsets and size multiples of 4) between dispatches."""
        self._end_pass()
        self.encoder.copy_buffer_to_buffer(src, src_offset, dst, dst_offset, (int(nbytes) + 3) // 4 * 4)

    def submit(self) -> None:
        """Finish the encoder and queue it; the recorder is unusable afterwards."""
        self._end_pass()
        try:
            self.ctx.device.queue.submit([self.encoder.finish()])
        except Exception as exc:
            raise BackendError(f"GPU submit failed: {_describe(exc)}") from None

    def _end_pass(self) -> None:
        if self._pass is not None:
            self._pass.end()
            self._pass = None


def workgroup_grid(n_groups: int, limit: int = 65535) -> tuple[int, int]:
    """(x, y) with x * y >= n_groups and both <= limit: shaders recover the linear index as
    `wid.x + wid.y * num_workgroups.x` and return early when it is >= n_groups."""
    if n_groups <= limit:
        return max(n_groups, 1), 1
    y = -(-n_groups // limit)
    return -(-n_groups // y), y


def _pad4(data: np.ndarray) -> np.ndarray:
    pad = (-data.nbytes) % 4 or (4 if data.nbytes == 0 else 0)
    return np.concatenate([data, np.zeros(pad, np.uint8)]) if pad else data


def _import_wgpu() -> Any:
    try:
        import wgpu  # noqa: PLC0415 - imported lazily: loading wgpu-native costs time and may fail
    except Exception as exc:
        raise BackendError(f"the wgpu package is unavailable ({_describe(exc)})") from None
    return wgpu


def _describe(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:400] + "..."
