#!/usr/bin/env bash
# Scaling experiment: the same short run on 1, 2, 4, ... ranks; prints ranks and training images/s
# (from each run's metrics.jsonl epoch line). Usage: bash cluster/scaling.sh DATA_DIR [RANKS...]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:?usage: bash cluster/scaling.sh DATA_DIR [RANKS...]}
shift
ranks=("$@")
[ ${#ranks[@]} -gt 0 ] || ranks=(1 2 4)
root_flag=()
[ "$(id -u)" -eq 0 ] && root_flag=(--allow-run-as-root)
for n in "${ranks[@]}"; do
  out=$(mktemp -d)
  OPENBLAS_NUM_THREADS=1 mpirun --oversubscribe "${root_flag[@]}" -n "$n" .build/release/radar-worker \
    --data "$data" --output "$out" --experiment scale --config tiny --batch-size 8 --num-epochs 1 \
    --max-steps-per-epoch 20 --accumulation-steps 1 >/dev/null 2>&1
  rate=$(grep '"images_per_s"' "$out/scale/metrics.jsonl" | tail -n 1 | sed -E 's/.*"images_per_s":([0-9.]+).*/\1/')
  echo "ranks $n  images/s $rate"
  rm -rf "$out"
done
