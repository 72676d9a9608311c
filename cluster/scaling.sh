#!/usr/bin/env bash
# Scaling experiment: the same short training run on 1, 2, 4, ... ranks, and a table of
# ranks x (step time, images/s, time waiting for the loader, all-reduce time per step, the part of it not hidden behind
# backward, overlap fraction, scaling efficiency = images/s / (ranks x images/s on 1 rank)).
#
#   bash cluster/scaling.sh DATA_DIR [RANKS...] [-- OPTIONS]
#   options: --config tiny|mid|full|FILE (tiny)  --batch-size B (8)  --steps S (20)  --threads T (1)
#            --epochs E (1; the table is the last epoch's, so 2 leaves the first one's start-up out:
#                        a GPU's context, its libraries' set-up, the loader's first batches)
#            --device cpu|cuda (cpu: one rank per core is fair; ranks beyond the cores share them)
#            --bucket-mb M (radar-worker's default)  --grad-dtype fp32|bf16  --precision P
#            --link RATE (ranks one per simulated host, links shaped to RATE: cluster/netns.sh,
#                         root only; default: this machine)
#            --transport tcp|mpi (with --link: TCP ranks (tcp, default), or mpirun across the
#                         simulated hosts: netns.sh mpirun; without: mpirun (mpi, default), or
#                         TCP ranks from `radar launch` (tcp: a pod without MPI, one GPU a rank))
#            --json (one JSON object per rank count instead of the table)
# Binaries from .build/release (swift build -c release), a bundle's bin/ (scripts/bundle.sh puts
# this script in the bundle's cluster/), or RADAR_BIN.
set -euo pipefail
# Paths given on the command line are the caller's (relative to where it was run).
caller=$PWD
abs() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$caller/$1" ;; esac; }
cd "$(dirname "$0")/.."
data=$(abs "${1:?usage: bash cluster/scaling.sh DATA_DIR [RANKS...] [-- OPTIONS]}")
shift
ranks=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do ranks+=("$1"); shift; done
[ $# -gt 0 ] && shift
[ ${#ranks[@]} -gt 0 ] || ranks=(1 2 4)
config=tiny batch=8 steps=20 epochs=1 threads=1 device=cpu link="" transport="" json=0 extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config=$2; shift 2 ;;
    --batch-size) batch=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --bucket-mb|--grad-dtype|--precision) extra+=("$1" "$2"); shift 2 ;;
    --link) link=$2; shift 2 ;;
    --transport) transport=$2; shift 2 ;;
    --json) json=1; shift ;;
    *) head -n 21 "$0" | tail -n 20 >&2; exit 2 ;;
  esac
done
case "$config" in tiny|mid|full) ;; *) config=$(abs "$config") ;; esac
[ -n "$transport" ] || { [ -n "$link" ] && transport=tcp || transport=mpi; }
case "$transport" in tcp|mpi) ;; *) echo "cluster/scaling.sh: --transport is tcp or mpi, not $transport" >&2; exit 2 ;; esac
bin=.build/release
[ -x "$bin/radar-worker" ] || [ ! -x bin/radar-worker ] || bin=bin  # in a bundle
[ -n "${RADAR_BIN:-}" ] && bin=$(abs "$RADAR_BIN")
bin=$(cd "$bin" && pwd)
[ -x "$bin/radar-worker" ] || { echo "cluster/scaling.sh: no $bin/radar-worker (swift build -c release)" >&2; exit 2; }
export OPENBLAS_NUM_THREADS=$threads
root_flag=()
[ "$(id -u)" -eq 0 ] && root_flag=(--allow-run-as-root)
results=$(mktemp)
work=$(mktemp -d /tmp/radar-scaling.XXXXXX)
trap 'rm -rf "$work" "$results"; [ -n "$link" ] && bash cluster/netns.sh down' EXIT
port=29950
for n in "${ranks[@]}"; do
  out=$work/n$n
  args=(--data "$data" --output "$out" --experiment scale --config "$config" --batch-size "$batch" --num-epochs "$epochs"
        --max-steps-per-epoch "$steps" --accumulation-steps 1 --threads "$threads" --device "$device" --timeout 120 "${extra[@]}")
  if [ -n "$link" ]; then
    bash cluster/netns.sh down
    bash cluster/netns.sh up "$n" "$link" >/dev/null
    if [ "$transport" = mpi ]; then
      set +e
      bash cluster/netns.sh mpirun -x OPENBLAS_NUM_THREADS "$bin/radar-worker" "${args[@]}" >"$out.log" 2>&1
      rc=$?
      set -e
    else
      port=$((port + 1))
      RADAR_JOB_TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n') \
        bash cluster/netns.sh ranks "$out.logs" "$port" "$bin/radar-worker" --transport tcp "${args[@]}"
      rc=$(cat "$out.logs/rank0.rc")
    fi
    bash cluster/netns.sh down
  elif [ "$transport" = tcp ]; then
    set +e
    "$bin/radar" launch -n "$n" -- radar-worker "${args[@]}" >"$out.log" 2>&1
    rc=$?
    set -e
  else
    set +e
    mpirun --oversubscribe "${root_flag[@]}" -n "$n" "$bin/radar-worker" "${args[@]}" >"$out.log" 2>&1
    rc=$?
    set -e
  fi
  if [ "$rc" != 0 ]; then
    echo "cluster/scaling.sh: $n ranks failed (exit $rc):" >&2
    # The ranks' error lines (an MPI_Abort banner follows them), else the log's end.
    for f in "$out.log" "$out.logs"/rank*.err; do
      [ -f "$f" ] || continue
      grep -E "error:|stopped:" "$f" | head -n 5 >&2 || tail -n 5 "$f" >&2
    done
    exit 1
  fi
  # No sed: a bundle's check runs this with the system's libacl hidden.
  printf '%s %s\n' "$n" "$(grep '"train_loss"' "$out/scale/metrics.jsonl" | tail -n 1)" >> "$results"
done
where="mpirun on one machine"
[ "$transport" = tcp ] && where="TCP ranks on one machine (radar launch)"
[ -n "$link" ] && where="$link links, one host a rank, $([ "$transport" = mpi ] && echo "mpirun across them" || echo "TCP ranks")"
python3 - "$results" "$json" "$config" "$batch" "$device" "$where" "$(nproc)" <<'PY'
import json, sys
path, as_json, config, batch, device, link, cores = sys.argv[1:8]
rows = [dict(json.loads(l.split(" ", 1)[1]), ranks=int(l.split(" ", 1)[0])) for l in open(path) if l.strip()]
base = next((r["images_per_s"] for r in rows if r["ranks"] == 1), None)
for r in rows:
    r["scaling_efficiency"] = r["images_per_s"] / (r["ranks"] * base) if base else None
    r.update({"config": config, "batch_size_per_rank": int(batch), "device": device, "link": link, "cores": int(cores)})
if as_json == "1":
    for r in rows:
        print(json.dumps({k: v for k, v in r.items() if k not in ("val", "val_heads")}, sort_keys=True))
    sys.exit(0)
print(f"config {config}, batch {batch} per rank, device {device}, {link}, {cores} cores")
print("| ranks | step s | images/s | data wait s/step | all-reduce s/step | exposed s/step | overlap | efficiency |")
print("|---|---|---|---|---|---|---|---|")
def f(r, k, fmt):
    v = r.get(k)
    return fmt % v if isinstance(v, (int, float)) else "-"
for r in rows:
    print(f"| {r['ranks']} | {f(r, 'step_seconds', '%.3f')} | {f(r, 'images_per_s', '%.1f')} | {f(r, 'data_wait_seconds', '%.3f')} | {f(r, 'allreduce_seconds', '%.3f')} | "
          f"{f(r, 'allreduce_exposed_seconds', '%.3f')} | {f(r, 'overlap_fraction', '%.2f')} | {f(r, 'scaling_efficiency', '%.2f')} |")
PY
