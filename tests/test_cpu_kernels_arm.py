"""The cpu kernels' aarch64 variants (portable, neon, dotprod) compute the bits x86's portable build does.

tests/native/variant_driver.c calls the library's exported kernels on deterministic inputs (every
weight format, 1..17 and 150 activation rows, row counts off the tile and thread split, 1 and 2
threads, zero and extreme scales, fused mixed-format calls, the activation encoders, attention,
LoRA, the f16/bf16 conversions) and writes every output to a file. Each variant's library sources and
the driver are compiled with the library's own flags (`native.CFLAGS`, less the shared-library ones)
for the variant's CPU into one object, linked statically against zig's musl, and run: natively for
the x86 variants this CPU has, under qemu-aarch64 (`-cpu max`, which has dotprod) for the ARM ones.
Every output file must equal x86 portable's byte for byte. The ARM tests skip, saying so, only where
qemu-aarch64 is missing; the x86 ones need only zig.

qemu also pins the instruction paths: the neon and portable builds run on an armv8.0 core
(cortex-a53) with the same bits, and the dotprod build traps there (its sdot is armv8.2's) and
runs on a dotprod core (cortex-a76).
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from host_functions import native

QEMU = shutil.which("qemu-aarch64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-aarch64 is missing (Debian package qemu-user, which "
                                                     "scripts/setup.sh --test installs)")
# On an ARM machine test_cpu_kernels.py compares its variants natively.
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.machine() != "x86_64",
                                reason="runs x86 builds natively and ARM builds under qemu: needs Linux on x86-64")

DRIVER = Path(__file__).parent / "native" / "variant_driver.c"
ARM = native.ARCH_VARIANTS["aarch64"]
X86 = native.ARCH_VARIANTS["x86_64"]
_FLAGS = [f for f in native.CFLAGS if f not in ("-fPIC", "-shared")]


def _zig_cc(*args: str) -> None:
    out = subprocess.run([sys.executable, "-m", "ziglang", "cc", *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]


def _build_driver(variant: native.Variant, arch: str, out_dir: Path) -> Path:
    """The driver and the library's sources compiled for `variant`'s CPU, linked statically against
    musl built for the architecture's baseline (one libc build per architecture, not per variant)."""
    target = variant.target.replace("-gnu", "-musl")
    obj, exe = out_dir / f"{arch}-{variant.name}.o", out_dir / f"{arch}-{variant.name}"
    sources = [str(p) for p in sorted(native.SOURCE_DIR.glob("*.c"))]
    _zig_cc("-c", "-target", target, f"-mcpu={variant.mcpu}", *variant.defines, *_FLAGS, f"-I{native.SOURCE_DIR}",
            *sources, str(DRIVER), "-o", str(obj))
    baseline = native.ARCH_VARIANTS[arch]["portable"].mcpu
    _zig_cc("-target", target, f"-mcpu={baseline}", "-static", str(obj), "-lpthread", "-o", str(exe))
    return exe


def _run(command: list[str], output: Path) -> tuple[bytes, list[tuple[str, int, int]]]:
    """The driver's output bytes and its manifest of (case, offset, bytes)."""
    done = subprocess.run([*command, str(output)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command}: exit {done.returncode}: {done.stderr[-2000:]}"
    manifest = [(name, int(off), int(n)) for name, off, n in (line.split() for line in done.stdout.splitlines())]
    return output.read_bytes(), manifest


def _differing_cases(want: bytes, got: bytes, manifest: list[tuple[str, int, int]]) -> list[str]:
    return [name for name, off, n in manifest if want[off:off + n] != got[off:off + n]]


@pytest.fixture(scope="module")
def drivers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Built drivers by "arch/variant": every ARM variant and every x86 one, compiled side by side
    (each is one single-threaded clang; zig's cache makes a rebuild of unchanged sources instant)."""
    out_dir = tmp_path_factory.mktemp("variant_drivers")
    jobs = [(arch, name, v) for arch, table in (("aarch64", ARM), ("x86_64", X86)) for name, v in table.items()]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        built = pool.map(lambda job: _build_driver(job[2], job[0], out_dir), jobs)
        return {f"{arch}/{name}": exe for (arch, name, _), exe in zip(jobs, built, strict=True)}


@pytest.fixture(scope="module")
def reference(drivers: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """x86 portable's outputs, run natively."""
    return _run([str(drivers["x86_64/portable"])], tmp_path_factory.mktemp("reference") / "out.bin")


@needs_qemu
@pytest.mark.parametrize("name", list(ARM))
def test_arm_variant_computes_the_bits_of_x86_portable(drivers, reference, name: str, tmp_path: Path) -> None:
    want, manifest = reference
    got, got_manifest = _run([QEMU, "-cpu", "max", str(drivers[f"aarch64/{name}"])], tmp_path / "out.bin")
    assert got_manifest == manifest
    assert got == want, f"{name} differs from x86 portable in {_differing_cases(want, got, manifest)[:10]}"
    assert len(manifest) > 600 and {case.split("/")[1] for case, _, _ in manifest if case.startswith("matmul/")} == {
        "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
        "Q8_K"}


@pytest.mark.parametrize("name", [n for n, v in X86.items() if v.needs <= native.cpu_flags() and n != "portable"])
def test_x86_variant_computes_the_bits_of_x86_portable(drivers, reference, name: str, tmp_path: Path) -> None:
    """The same driver on the x86 variants this CPU runs: conversions of NaNs included (F16C's)."""
    want, manifest = reference
    got, _ = _run([str(drivers[f"x86_64/{name}"])], tmp_path / "out.bin")
    assert got == want, f"{name} differs from x86 portable in {_differing_cases(want, got, manifest)[:10]}"


@needs_qemu
def test_arm_instruction_paths(drivers, reference, tmp_path: Path) -> None:
    """neon and portable need only armv8.0 (they run on a cortex-a53, with the same bits); dotprod
    uses instructions armv8.0 lacks (it traps there: SIGILL) and runs on a dotprod core."""
    want, _ = reference
    for name in ("neon", "portable"):
        got, _ = _run([QEMU, "-cpu", "cortex-a53", str(drivers[f"aarch64/{name}"])], tmp_path / f"{name}.bin")
        assert got == want, name
    # in tmp_path: where core dumps are on, qemu writes the guest's core file to the working directory
    trapped = subprocess.run([QEMU, "-cpu", "cortex-a53", str(drivers["aarch64/dotprod"]), str(tmp_path / "x.bin")],
                             capture_output=True, timeout=300, cwd=tmp_path)
    assert trapped.returncode == -signal.SIGILL, trapped.stderr[-500:]
    got, _ = _run([QEMU, "-cpu", "cortex-a76", str(drivers["aarch64/dotprod"])], tmp_path / "dotprod.bin")
    assert got == want
