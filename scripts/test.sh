#!/usr/bin/env bash
# Installs the system packages if missing, builds, and runs every test (unit, gradient checks,
# PyTorch fixtures, multi-process MPI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export OPENBLAS_NUM_THREADS=1
swift build --build-tests
swift test
