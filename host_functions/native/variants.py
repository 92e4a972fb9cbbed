"""Which build of the kernels a CPU runs: the variants per architecture and the choice among them.

Variants are compiled for explicit targets, never -mcpu=native (these machines report AMX in cpuid and
trap on tile instructions; a native build would pick up whatever the compiler believes):

    x86-64   portable     baseline x86-64, plain C
             avx2         x86-64-v3 (AVX2, FMA, F16C)
             avxvnni      x86-64-v3 + AVX-VNNI (256-bit vpdpbusd)
             avx512vnni   x86-64-v4 + AVX512-VNNI
    aarch64  portable     baseline armv8-a, plain C (REALM_PLAIN_C keeps lanes.h off NEON)
             neon         armv8-a NEON (vmull_s8 + pairwise widening adds)
             dotprod      armv8.2-a + dotprod (sdot: vdotq_s32)

`select_variant()` takes the best one the CPU reports in /proc/cpuinfo (`flags` on x86, `Features`
on ARM; the kernel clears flags whose register state the OS does not save), or REALM_CPU_KERNELS when
set; `choose_variant()` is that choice as a pure function of the architecture, the flags and the
forced name. Every variant computes the same bits (see lanes.h), so the choice changes speed only.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from host_functions import settings
from host_functions.errors import BackendError


@dataclass(frozen=True)
class Variant:
    """One way to build the library: its compiler target and the CPU flags it needs."""

    name: str
    target: str  # zig target triple
    mcpu: str  # zig/clang CPU model plus features
    needs: frozenset[str]  # /proc/cpuinfo flags the CPU must report
    defines: tuple[str, ...] = ()  # preprocessor flags (-D...) that pick lanes.h's code


def _v(name: str, target: str, mcpu: str, *needs: str, defines: tuple[str, ...] = ()) -> Variant:
    return Variant(name, target, mcpu, frozenset(needs), defines)


_X86 = "x86_64-linux-gnu"
_ARM = "aarch64-linux-gnu"
_V3_FLAGS = ("avx", "avx2", "fma", "f16c", "bmi2")
# Per architecture (platform.machine()), fastest first: the first one whose flags the CPU has wins.
ARCH_VARIANTS: dict[str, dict[str, Variant]] = {arch: {v.name: v for v in variants} for arch, variants in (
    ("x86_64", (
        _v("avx512vnni", _X86, "x86_64_v4+avx512vnni", *_V3_FLAGS, "avx512f", "avx512bw", "avx512vl", "avx512dq",
           "avx512cd", "avx512_vnni"),
        _v("avxvnni", _X86, "x86_64_v3+avxvnni", *_V3_FLAGS, "avx_vnni"),
        _v("avx2", _X86, "x86_64_v3", *_V3_FLAGS),
        _v("portable", _X86, "x86_64"),
    )),
    ("aarch64", (
        _v("dotprod", _ARM, "generic+v8_2a+dotprod", "asimd", "asimddp"),
        _v("neon", _ARM, "generic", "asimd"),
        # aarch64 always has NEON, so the compiler defines __ARM_NEON: plain C is asked for by name
        _v("portable", _ARM, "generic", defines=("-DREALM_PLAIN_C",)),
    )),
)}
_ARCH_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of /proc/cpuinfo's text: its first `flags` (x86) or `Features` (ARM) line."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (empty where /proc/cpuinfo is missing or unreadable)."""
    try:
        return parse_cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return frozenset()


def choose_variant(machine: str, flags: frozenset[str], forced: str = "") -> Variant:
    """The variant for a CPU of architecture `machine` (platform.machine()) reporting `flags`: `forced`
    if given, else the fastest one the flags allow.

    Raises BackendError for an unsupported architecture, an unknown forced name or a forced variant
    whose flags the CPU lacks.
    """
    arch = _ARCH_ALIASES.get(machine.lower())
    if arch is None:
        raise BackendError(f"the cpu backend supports x86-64 and aarch64, not {machine}")
    candidates = ARCH_VARIANTS[arch]
    forced = forced.strip().lower()
    if forced:
        if forced not in candidates:
            raise BackendError(f"{settings.CPU_KERNELS}={forced!r}: choose from {', '.join(candidates)}")
        variant = candidates[forced]
        if not variant.needs <= flags:
            missing = ", ".join(sorted(variant.needs - flags))
            raise BackendError(f"{settings.CPU_KERNELS}={forced}: this CPU lacks {missing}")
        return variant
    return next(v for v in candidates.values() if v.needs <= flags)


def select_variant() -> Variant:
    """The variant to use on this machine: REALM_CPU_KERNELS if set, else the fastest one this CPU
    supports (choose_variant on /proc/cpuinfo).

    Raises BackendError off Linux, and as choose_variant does.
    """
    if not sys.platform.startswith("linux"):
        raise BackendError(f"the cpu backend supports Linux on x86-64 and aarch64, not {sys.platform}")
    return choose_variant(platform.machine(), cpu_flags(), settings.cpu_kernels())
