#!/usr/bin/env bash
# Set up everything the test suite needs, check the code, then run all of it: unit, kernel (WGSL on
# llvmpipe) and e2e tests. Arguments go to pytest (e.g. -q, or a test file).
#
# The checks are ruff (lint and import order) and mypy (types; its files are set in pyproject.toml).
# They print nothing when clean; on findings they print them and the command fails before pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test

check() {  # run one check; its output is shown only when it fails
    local out
    if ! out=$("$@" 2>&1); then
        printf '%s\n' "$out" >&2
        echo "test: ${1##*/} found problems (above)" >&2
        return 1
    fi
}

failed=0  # run both checks so that one run shows every finding
check .venv/bin/ruff check --quiet realm host_functions tests e2e scripts || failed=1
check .venv/bin/mypy || failed=1
[ $failed -eq 0 ] || exit 1
exec .venv/bin/python -m pytest "$@"
