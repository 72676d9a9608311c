#!/usr/bin/env bash
# The main job, end to end, in a few minutes on 2 cores:
#   1. installs the system packages if missing;  2. builds in release mode;
#   3. generates the synthetic deepfake set as WebDataset shards (radar synth);
#   4. trains a tiny RADAR with 2 MPI ranks (one process when mpirun is absent);
#   5. evaluates the best checkpoint on the test split;  6. exports the run as a zip.
# Extra arguments go to the trainer (e.g. --num-epochs 3).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
swift build -c release
bin=.build/release
data=data/synth
out=outputs
exp=demo
$bin/radar synth --output "$data" --count 3000 --size 32 --seed 1 --overwrite  # the demo owns data/synth
train_args=(--data "$data" --output "$out" --experiment "$exp" --config tiny --batch-size 8 --num-epochs 5
            --learning-rate 1e-3 --accumulation-steps 1 --overwrite)
if command -v mpirun >/dev/null 2>&1; then
  root_flag=()
  [ "$(id -u)" -eq 0 ] && root_flag=(--allow-run-as-root)
  OPENBLAS_NUM_THREADS=1 mpirun --oversubscribe "${root_flag[@]}" -n 2 $bin/radar-worker "${train_args[@]}" --threads 1 "$@"
else
  echo "demo: mpirun not found, training in one process" >&2
  $bin/radar train "${train_args[@]}" "$@"
fi
$bin/radar evaluate --checkpoint "$out/$exp/best.safetensors.lz4" --data "$data" --split test | tee "$out/$exp/test_evaluation.json"
zip=$($bin/radar export --results-dir "$out/$exp" --output-dir exports --create-download-script)
auc=$(python3 -c "import json,sys; print('%.4f' % json.load(open(sys.argv[1]))['auc'])" "$out/$exp/test_evaluation.json" 2>/dev/null || echo "see $out/$exp/test_evaluation.json")
echo
echo "results: $out/$exp (checkpoints, config.json, metrics.json, metrics.jsonl, plots/, tensorboard/: tensorboard --logdir $out)"
echo "export:  $zip"
echo "test AUC: $auc"
