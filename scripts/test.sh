#!/usr/bin/env bash
# Set up everything the test suite needs, then run all of it: unit, kernel (WGSL on llvmpipe) and e2e tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
exec .venv/bin/python -m pytest "$@"
