#!/usr/bin/env bash
# Runs the Triton tests, each stage in its own pytest process
# (see tests/kernels_triton/conftest.py):
#   interpret  kernel numerics under TRITON_INTERPRET=1 against the torch reference
#   compile    ahead-of-time compilation for sm_80, sm_90 and, with the AMD tunings, gfx942,
#              gfx950 (interpreter off)
# Usage: tests/kernels_triton/run_triton_tests.sh [interpret|compile|all] [extra pytest args...]
# Needs, on top of the core's test install: pip install triton numpy -e ./plugins/kernels_triton
set -euo pipefail
cd "$(dirname "$0")/../.."
stage="${1:-all}"
shift || true
case "$stage" in
  interpret|compile|all) ;;
  *) echo "usage: $0 [interpret|compile|all] [pytest args...]" >&2; exit 2 ;;
esac
if [[ $stage == all || $stage == interpret ]]; then
  LLMSERVE_TRITON_TESTS=interpret python -m pytest -q tests/kernels_triton "$@"
fi
if [[ $stage == all || $stage == compile ]]; then
  env -u TRITON_INTERPRET LLMSERVE_TRITON_TESTS=compile \
    python -m pytest -q tests/kernels_triton "$@"
fi
