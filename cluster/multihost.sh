#!/usr/bin/env bash
# Multi-host experiments on one machine (root): TCP ranks one per simulated host
# (cluster/netns.sh), links shaped to pod-to-pod rates. For each rate it measures the ring
# all-reduce (fp32 and bf16 on the wire) and, with --data, a short training run (step time,
# all-reduce time per step, overlap fraction, images/s); with --partition it cuts one host's link
# during training and checks that every rank ends within the deadline, naming the lost host's rank.
#
#   bash cluster/multihost.sh [--hosts 4] [--ranks-per-host 1] [--rates 10gbit,1gbit] [--delay 0.2ms] [--sizes 8,88]
#        [--data DIR --config tiny --batch-size 8 --steps 20 --threads 1 --bucket-mb 10] [--partition]
#        [--timeout 10] [--bin .build/release] [--mpi]
#
# --mpi: the all-reduce also under mpirun across the hosts (`netns.sh mpirun`: each host's ranks
# in its namespace under its own host name; OpenMPI's TCP between hosts, its shared memory
# within one), our ring (in two levels where hosts hold several ranks) and MPI_Allreduce.
#
# Prints one JSON object per measurement (stdout). Exits non-zero when a run fails or the
# partition is not detected as stated (then the ranks' logs stay in the folder it names).
set -euo pipefail
# Paths given on the command line are the caller's (relative to where it was run).
caller=$PWD
abs() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$caller/$1" ;; esac; }
cd "$(dirname "$0")/.."
hosts=4 rates=10gbit,1gbit delay="" sizes=8,88 data="" config=tiny batch=8 steps=20 threads=1 partition=0 timeout=10 bucket=10
bin=.build/release mpi=0
while [ $# -gt 0 ]; do
  case "$1" in
    --hosts) hosts=$2; shift 2 ;;
    --ranks-per-host) export RANKS_PER_HOST=$2; shift 2 ;;
    --rates) rates=$2; shift 2 ;;
    --delay) delay=$2; shift 2 ;;
    --sizes) sizes=$2; shift 2 ;;
    --data) data=$(abs "$2"); shift 2 ;;
    --config) config=$2; shift 2 ;;
    --batch-size) batch=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --bucket-mb) bucket=$2; shift 2 ;;
    --partition) partition=1; shift ;;
    --mpi) mpi=1; shift ;;
    --timeout) timeout=$2; shift 2 ;;
    --bin) bin=$(abs "$2"); shift 2 ;;
    *) sed -n '2,18p' "$0" >&2; exit 2 ;;
  esac
done
case "$config" in tiny|mid|full) ;; *) config=$(abs "$config") ;; esac
bin=$(cd "$bin" && pwd)
[ -x "$bin/radar" ] && [ -x "$bin/radar-worker" ] || { echo "cluster/multihost.sh: no radar, radar-worker in $bin (swift build -c release)" >&2; exit 2; }
work=$(mktemp -d /tmp/radar-multihost.XXXXXX)
RADAR_JOB_TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export RADAR_JOB_TOKEN OPENBLAS_NUM_THREADS=$threads
port=29900
failed=0
cleanup() {
  bash cluster/netns.sh down
  if [ "$failed" = 0 ]; then rm -rf "$work"; else echo "cluster/multihost.sh: logs in $work" >&2; fi
}
trap cleanup EXIT
bash cluster/netns.sh down

# The last JSON object in a rank's stdout that has "bench": "allreduce", one per size.
report() { python3 - "$@" <<'PY'
import json, sys
kind, path, extra = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if kind == "bench":
    for line in open(path):
        if line.startswith("{"):
            r = json.loads(line); r.update(extra); print(json.dumps(r, sort_keys=True))
elif kind == "train":
    epoch = [json.loads(l) for l in open(path) if '"train_loss"' in l and '"val"' in l]
    e = epoch[-1]
    r = {k: e[k] for k in ("images_per_s", "step_seconds", "allreduce_seconds", "allreduce_exposed_seconds", "overlap_fraction") if k in e}
    r.update(extra); r["bench"] = "multihost_train"; print(json.dumps(r, sort_keys=True))
PY
}

worker_args() {  # $1 output dir, $2 epochs, $3 steps per epoch, [$4 transport: tcp]
  echo --transport "${4:-tcp}" --data "$data" --output "$1" --experiment e --config "$config" --batch-size "$batch" \
    --num-epochs "$2" --max-steps-per-epoch "$3" --accumulation-steps 1 --threads "$threads" --timeout "$timeout" \
    --heartbeat-deadline "$timeout" --bucket-mb "$bucket"
}

IFS=, read -r -a rate_list <<< "$rates"
for rate in "${rate_list[@]}"; do
  bash cluster/netns.sh up "$hosts" "$rate" $delay >&2
  shaping=$(bash cluster/netns.sh shaping)
  for dtype in fp32 bf16; do
    port=$((port + 1))
    bash cluster/netns.sh ranks "$work/ar-$rate-$dtype" "$port" "$bin/radar" bench allreduce --transport tcp --sizes "$sizes" \
      --repeats 5 --grad-dtype "$dtype" --timeout 60
    if [ "$(cat "$work/ar-$rate-$dtype/rank0.rc")" != 0 ]; then
      echo "cluster/multihost.sh: all-reduce at $rate ($dtype) failed:" >&2; cat "$work/ar-$rate-$dtype"/rank*.err >&2; failed=1; continue
    fi
    report bench "$work/ar-$rate-$dtype/rank0.out" "{\"link\": \"$rate\", \"delay\": \"${delay:-none}\", \"shaping\": \"$shaping\", \"hosts\": $hosts, \"ranks_per_host\": ${RANKS_PER_HOST:-1}}"
    if [ "$mpi" = 1 ]; then
      if bash cluster/netns.sh mpirun -x OPENBLAS_NUM_THREADS "$bin/radar" bench allreduce --sizes "$sizes" --repeats 5 \
          --grad-dtype "$dtype" --timeout 60 > "$work/mpi-$rate-$dtype.out" 2> "$work/mpi-$rate-$dtype.err"; then
        report bench "$work/mpi-$rate-$dtype.out" "{\"link\": \"$rate\", \"delay\": \"${delay:-none}\", \"shaping\": \"$shaping\", \"hosts\": $hosts, \"ranks_per_host\": ${RANKS_PER_HOST:-1}}"
      else
        echo "cluster/multihost.sh: all-reduce under mpirun at $rate ($dtype) failed:" >&2; cat "$work/mpi-$rate-$dtype.err" >&2; failed=1
      fi
    fi
  done
  if [ -n "$data" ]; then
    port=$((port + 1))
    # shellcheck disable=SC2046
    bash cluster/netns.sh ranks "$work/train-$rate" "$port" "$bin/radar-worker" $(worker_args "$work/train-$rate/out" 1 "$steps")
    if [ "$(cat "$work/train-$rate/rank0.rc")" != 0 ]; then
      echo "cluster/multihost.sh: training at $rate failed:" >&2; cat "$work/train-$rate"/rank*.err >&2; failed=1
    else
      report train "$work/train-$rate/out/e/metrics.jsonl" "{\"link\": \"$rate\", \"hosts\": $hosts, \"config\": \"$config\", \"batch_size\": $batch, \"bucket_mb\": $bucket, \"shaping\": \"$shaping\", \"transport\": \"tcp\"}"
    fi
    if [ "$mpi" = 1 ]; then
      # The same run under mpirun across the hosts (the coordinator reached at rank 0's address).
      # shellcheck disable=SC2046
      if bash cluster/netns.sh mpirun -x OPENBLAS_NUM_THREADS "$bin/radar-worker" $(worker_args "$work/mpi-train-$rate/out" 1 "$steps" mpi) \
          > "$work/mpi-train-$rate.out" 2> "$work/mpi-train-$rate.err"; then
        report train "$work/mpi-train-$rate/out/e/metrics.jsonl" "{\"link\": \"$rate\", \"hosts\": $hosts, \"config\": \"$config\", \"batch_size\": $batch, \"bucket_mb\": $bucket, \"shaping\": \"$shaping\", \"transport\": \"mpi\"}"
      else
        echo "cluster/multihost.sh: training under mpirun at $rate failed:" >&2; cat "$work/mpi-train-$rate.err" >&2; failed=1
      fi
    fi
  fi
  bash cluster/netns.sh down
done

if [ "$partition" = 1 ]; then
  [ -n "$data" ] || { echo "cluster/multihost.sh: --partition needs --data" >&2; exit 2; }
  [ "${RANKS_PER_HOST:-1}" = 1 ] || { echo "cluster/multihost.sh: --partition takes one rank a host" >&2; exit 2; }
  victim=$((hosts - 1))
  bash cluster/netns.sh up "$hosts" "${rate_list[0]}" $delay >&2
  port=$((port + 1))
  dir=$work/partition
  # shellcheck disable=SC2046
  bash cluster/netns.sh ranks "$dir" "$port" "$bin/radar-worker" $(worker_args "$dir/out" 50 0) &
  ranks_pid=$!
  for _ in $(seq 1 600); do grep -q '"step"' "$dir/out/e/metrics.jsonl" 2>/dev/null && break; sleep 0.1; done
  grep -q '"step"' "$dir/out/e/metrics.jsonl" 2>/dev/null || { echo "cluster/multihost.sh: partition run never trained" >&2; failed=1; exit 1; }
  t0=$(date +%s.%N)
  bash cluster/netns.sh cut "$victim"
  wait "$ranks_pid" || true
  t1=$(date +%s.%N)
  python3 - "$dir" "$hosts" "$victim" "$t0" "$t1" "$timeout" <<'PY' || failed=1
import json, sys
d, n, victim, t0, t1, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
rcs = [int(open(f"{d}/rank{k}.rc").read()) for k in range(n)]
errs = [open(f"{d}/rank{k}.err").read() for k in range(n)]
named = [k for k in range(n) if k != victim and (f"rank {victim} lost" in errs[k] or f"waiting for rank {victim}" in errs[k]
                                                or f"connection to rank {victim} lost" in errs[k])]
ok = all(rc != 0 for rc in rcs) and len(named) > 0 and t1 - t0 < 3 * timeout
print(json.dumps({"bench": "multihost_partition", "hosts": n, "cut_rank": victim, "seconds_to_end": round(t1 - t0, 2),
                  "deadline_seconds": 3 * timeout, "exit_statuses": rcs, "ranks_naming_it": named, "ok": ok}, sort_keys=True))
for k in range(n):
    last = [l for l in errs[k].splitlines() if l.strip()][-1:] or ["(nothing)"]
    print(f"rank {k} (exit {rcs[k]}): {last[0]}", file=sys.stderr)
sys.exit(0 if ok else 1)
PY
  bash cluster/netns.sh down
fi
exit $failed
