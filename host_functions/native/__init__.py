"""The native CPU kernels: C sources in this folder, compiled on the user's machine and called via ctypes.

`variants` chooses the build a CPU runs (its flags, REALM_CPU_KERNELS), `build` compiles the sources
with zig into Realm's cache, `binding` declares the library's entry points and wraps them (`Kernels`),
and `loader` keeps the process's one loaded library and its thread count (`load()`). Callers use the
names re-exported here: `native.load()`, `native.Kernels`, `native.choose_variant`, ...
"""

from host_functions.native.binding import (
    GATED_KINDS,
    LORA_MAX_RANK,
    MAX_SEGMENTS,
    Kernels,
    LoraPart,
    NativeLayer,
    lora_parts,
)
from host_functions.native.build import CFLAGS, SOURCE_DIR, build, cache_dir, library_path
from host_functions.native.loader import default_threads, load, set_default_threads
from host_functions.native.variants import (
    ARCH_VARIANTS,
    Variant,
    choose_variant,
    cpu_flags,
    parse_cpu_flags,
    select_variant,
)

__all__ = ["ARCH_VARIANTS", "CFLAGS", "GATED_KINDS", "LORA_MAX_RANK", "MAX_SEGMENTS", "SOURCE_DIR", "Kernels",
           "LoraPart", "NativeLayer", "Variant",
           "build", "cache_dir", "choose_variant", "cpu_flags", "default_threads", "library_path", "load",
           "lora_parts", "parse_cpu_flags", "select_variant", "set_default_threads"]
