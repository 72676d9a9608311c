#!/usr/bin/env bash
# The main job: installs the system packages if missing, builds in release mode, generates the
# synthetic deepfake set as WebDataset shards, trains a tiny RADAR on it (augmentation, OneCycle,
# validation AUC every epoch, test metrics at the end), then runs 2 MPI ranks of data-parallel
# training. A few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
swift build -c release
.build/release/radar synth --output data/synth --count 3000 --size 32 --seed 1
.build/release/radar train --data data/synth --output outputs --experiment demo --config tiny \
  --batch-size 16 --num-epochs 5 --learning-rate 1e-3 "$@"
if command -v mpirun >/dev/null 2>&1; then
  root_flag=""
  [ "$(id -u)" -eq 0 ] && root_flag="--allow-run-as-root"
  OPENBLAS_NUM_THREADS=1 mpirun --oversubscribe $root_flag -n 2 .build/release/radar-worker --config tiny --steps 20
fi
