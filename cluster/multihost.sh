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

# PIDs of radar-worker processes whose --output is $1 (a run's own folder).
ranks_running() {
  local p
  for p in $(pgrep -x radar-worker || true); do
    tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -q -- "--output $1 " && echo "$p"
  done
  return 0
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
  transports=tcp
  [ "$mpi" = 1 ] && transports="tcp mpi"
  for transport in $transports; do
    bash cluster/netns.sh up "$hosts" "${rate_list[0]}" $delay >&2
    dir=$work/partition-$transport
    mkdir -p "$dir"
    if [ "$transport" = tcp ]; then
      port=$((port + 1))
      # shellcheck disable=SC2046
      bash cluster/netns.sh ranks "$dir" "$port" "$bin/radar-worker" $(worker_args "$dir/out" 50 0) &
    else
      # One mpirun; each rank's stderr that reaches it lands in mpirun.err. Its ranks are found
      # by their --output (only this run's), in every namespace; its daemons are the new ones.
      orteds=$(pgrep -x orted || true)
      # shellcheck disable=SC2046
      setsid bash cluster/netns.sh mpirun -x OPENBLAS_NUM_THREADS "$bin/radar-worker" $(worker_args "$dir/out" 50 0 mpi) \
        > "$dir/mpirun.out" 2> "$dir/mpirun.err" &
    fi
    launcher=$!
    for _ in $(seq 1 600); do grep -q '"step"' "$dir/out/e/metrics.jsonl" 2>/dev/null && break; sleep 0.1; done
    if ! grep -q '"step"' "$dir/out/e/metrics.jsonl" 2>/dev/null; then
      echo "cluster/multihost.sh: partition run ($transport) never trained" >&2
      kill -KILL -- -"$launcher" 2>/dev/null || kill -KILL "$launcher" 2>/dev/null || true
      failed=1
      exit 1
    fi
    t0=$(date +%s.%N)
    bash cluster/netns.sh cut "$victim"
    launcher_up=false
    if [ "$transport" = tcp ]; then
      wait "$launcher" || true
      t1=$(date +%s.%N)
    else
      # Every rank ends by itself; mpirun then waits for the cut host's daemon, which it cannot
      # reach (OpenMPI's runtime has no daemon timeout): say so, and end it and its daemons.
      for _ in $(seq 1 $((30 * timeout))); do [ -z "$(ranks_running "$dir/out")" ] && break; sleep 0.1; done
      t1=$(date +%s.%N)
      ranks_running "$dir/out" | wc -l > "$dir/running"
      if kill -0 "$launcher" 2>/dev/null; then
        launcher_up=true
        kill -KILL -- -"$launcher" 2>/dev/null || true
      fi
      wait "$launcher" 2>/dev/null || true
      for p in $(pgrep -x orted); do grep -qx "$p" <<< "$orteds" || kill -KILL "$p" 2>/dev/null || true; done
    fi
    python3 - "$dir" "$hosts" "$victim" "$t0" "$t1" "$timeout" "$transport" "$launcher_up" <<'PY' || failed=1
import json, os, sys
d, n, victim, t0, t1, timeout, transport, launcher_up = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]), sys.argv[7], sys.argv[8] == "true"
def names(text):
    return f"rank {victim} lost" in text or f"waiting for rank {victim}" in text or f"connection to rank {victim} lost" in text
if transport == "tcp":
    rcs = [int(open(f"{d}/rank{k}.rc").read()) for k in range(n)]
    errs = [open(f"{d}/rank{k}.err").read() for k in range(n)]
    named = [k for k in range(n) if k != victim and names(errs[k])]
    ok = all(rc != 0 for rc in rcs) and len(named) > 0 and t1 - t0 < 3 * timeout
    record = {"exit_statuses": rcs, "ranks_naming_it": named}
else:
    # The ranks' own ending is what is checked: none left once the deadline passed.
    err = open(f"{d}/mpirun.err").read()
    running = int(open(f"{d}/running").read())
    named = [k for k in range(n) if k != victim and any(f"radar-worker rank {k}:" in l and names(l) for l in err.splitlines())]
    ok = running == 0 and names(err) and t1 - t0 < 3 * timeout
    record = {"ranks_left_running": running, "ranks_naming_it": named, "mpirun_waited_for_the_cut_host": launcher_up}
    errs = [err]
record.update({"bench": "multihost_partition", "transport": transport, "hosts": n, "cut_rank": victim, "seconds_to_end": round(t1 - t0, 2),
               "deadline_seconds": 3 * timeout, "ok": ok})
print(json.dumps(record, sort_keys=True))
for k, e in enumerate(errs):
    lines = [l for l in e.splitlines() if "radar-worker" in l or "rank" in l][-3:] or ["(nothing)"]
    for l in lines: print(f"{transport} {'rank ' + str(k) if transport == 'tcp' else 'mpirun'}: {l}", file=sys.stderr)
sys.exit(0 if ok else 1)
PY
    bash cluster/netns.sh down
  done
fi
exit $failed
