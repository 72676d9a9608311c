#!/usr/bin/env bash
# The main job: installs the system packages if missing, builds in release mode, and trains a
# small RADAR on procedurally generated deepfakes, then 2 MPI ranks for a few data-parallel steps.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
swift build -c release
.build/release/radar demo "$@"
if command -v mpirun >/dev/null 2>&1; then
  root_flag=""
  [ "$(id -u)" -eq 0 ] && root_flag="--allow-run-as-root"
  OPENBLAS_NUM_THREADS=1 mpirun --oversubscribe $root_flag -n 2 .build/release/radar-worker --config tiny --steps 20
fi
