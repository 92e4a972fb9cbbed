#!/usr/bin/env bash
# Set up Realm in ./.venv (idempotent). With --test, also the test tools and the Vulkan software
# driver (llvmpipe) that the WGSL kernel tests run on.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1
PYTHON=${PYTHON:-python3}

apt_install() {  # install Debian packages that are missing (needs root and apt-get)
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "setup: please install: ${missing[*]}" >&2
        return 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: Python 3.11 or newer is required ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv 2>/dev/null || { apt_install python3-venv && rm -rf .venv && "$PYTHON" -m venv .venv; }
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ $want_test -eq 1 ]; then
    apt_install mesa-vulkan-drivers libvulkan1
    .venv/bin/python -m pip install -q -e '.[test]'
else
    .venv/bin/python -m pip install -q -e .
fi
# Build the cpu backend's native kernels now (ziglang's clang, ~15 s once) rather than on the first run.
.venv/bin/python -c 'from host_functions import native; native.load(1)' ||
    echo "setup: the cpu kernels could not be built; the cpu backend will retry on first use" >&2
