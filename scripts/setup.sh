#!/usr/bin/env bash
# Set up Realm in ./.venv. With --test, also the test tools, the Vulkan software driver (llvmpipe)
# that the WGSL kernel tests run on, and qemu-user, which runs the aarch64 builds of the cpu kernels
# (tests/test_cpu_kernels_arm.py), and PostgreSQL, which the registry tests start (tests/postgres_server.py).
#
# Quiet and idempotent: what is already installed is not installed again. The project is
# reinstalled only when pyproject.toml (or the --test choice) changed since the last successful
# run, which .venv/.realm-setup records; pip's output goes to .venv/setup.log and is shown only
# if pip fails.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1
PYTHON=${PYTHON:-python3}
STAMP=.venv/.realm-setup
LOG=.venv/setup.log

apt_install() {  # install Debian packages that are missing (needs root and apt-get)
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "setup: please install: ${missing[*]}" >&2
        return 1
    fi
    echo "setup: installing ${missing[*]}" >&2
    apt-get update -qq
    # No recommends: qemu-user's (qemu-user-binfmt) would register ARM binaries with the kernel
    # system-wide; the tests call qemu-aarch64 by name.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

pip_install() {  # pip install quietly into .venv; its log is shown only on failure
    if ! .venv/bin/python -m pip install -q --disable-pip-version-check "$@" >"$LOG" 2>&1; then
        grep -v '^WARNING: Location' "$LOG" | tail -n 20 >&2
        echo "setup: pip install $* failed (full log: $LOG)" >&2
        exit 1
    fi
}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: Python 3.11 or newer is required ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv 2>/dev/null || { apt_install python3-venv && rm -rf .venv && "$PYTHON" -m venv .venv; }
fi
[ $want_test -eq 1 ] && apt_install mesa-vulkan-drivers libvulkan1 qemu-user postgresql

extras=$([ $want_test -eq 1 ] && echo '.[test]' || echo '.')
hash=$(.venv/bin/python -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')
have=$(cat "$STAMP" 2>/dev/null || true)
# Current: installed from this pyproject.toml with these extras (a test set-up includes the plain
# one), and still importable.
if { [ "$have" = "$hash $extras" ] || [ "$have" = "$hash .[test]" ]; } && .venv/bin/python -c 'import realm' 2>/dev/null; then
    exit 0
fi
pip_install -e "$extras"
echo "setup: installed realm into .venv ($extras)" >&2
# Build the cpu backend's native kernels now (ziglang's clang, ~15 s once) rather than on the first run.
.venv/bin/python -c 'from host_functions import native; native.load(1)' ||
    echo "setup: the cpu kernels could not be built; the cpu backend will retry on first use" >&2
echo "$hash $extras" >"$STAMP"
