#!/usr/bin/env python3
"""Build the guests in guest/*.c into guest/*.wasm with the pinned `ziglang` PyPI package.

    python scripts/build_guests.py            # rebuild every guest in place
    python scripts/build_guests.py --check    # rebuild into a temp dir; exit 1 if a committed .wasm differs

Builds are byte-identical: no debug info, no names (they would embed paths), and a fixed
compiler (ziglang 0.17.1, pinned in pyproject.toml's test extra).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

GUEST_DIR = Path(__file__).resolve().parent.parent / "guest"
ZIG_VERSION = "0.17.1"
CFLAGS = (
    "--target=wasm32-freestanding", "-O2", "-nostdlib", "-std=c11",
    "-fno-builtin",  # our memcpy/memset must not be "optimized" into calls to themselves
    "-g0", "-Wall", "-Wextra", "-Werror",
    "-Wl,--no-entry", "-Wl,--strip-all",  # a library of exports; no names, which would embed paths
)


def sources() -> list[Path]:
    """Every guest program: each guest/*.c is one module."""
    return sorted(GUEST_DIR.glob("*.c"))


def zig_version() -> str:
    out = subprocess.run([sys.executable, "-m", "ziglang", "version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def build(source: Path, out: Path) -> None:
    """Compile one guest; raises CalledProcessError with the compiler's message on failure."""
    cmd = [sys.executable, "-m", "ziglang", "cc", *CFLAGS, f"-I{GUEST_DIR}", source.name, "-o", str(out)]
    # Compile from the guest directory so no absolute path can reach the output.
    subprocess.run(cmd, cwd=GUEST_DIR, check=True, capture_output=True, text=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify the committed .wasm files instead of writing")
    args = parser.parse_args(argv)
    version = zig_version()
    if version != ZIG_VERSION:
        print(f"build_guests: ziglang {ZIG_VERSION} is required for byte-identical builds, found {version}",
              file=sys.stderr)
        return 2
    stale = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in sources():
            target = source.with_suffix(".wasm")
            out = Path(tmp) / target.name if args.check else target
            try:
                build(source, out)
            except subprocess.CalledProcessError as exc:
                print(f"build_guests: {source.name} failed:\n{exc.stderr}", file=sys.stderr)
                return 1
            if args.check and (not target.exists() or target.read_bytes() != out.read_bytes()):
                stale.append(target.name)
            print(f"{'checked' if args.check else 'built'} {target.relative_to(GUEST_DIR.parent)}")
    if stale:
        print(f"build_guests: committed modules differ from a rebuild: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
