#!/usr/bin/env bash
# The one-command GPU check, run from an unpacked bundle (scripts/bundle.sh) on a GPU machine:
#   1. probe: driver, GPU, memory, the CUDA libraries found, the kernel cache;
#   2. every Backend kernel against the CPU backend on the device;
#   3. the golden PyTorch parity cases on the device;
#   4. `radar bench step --device cuda` on the full config at batch 128 (halved until it fits) in
#      fp32, tf32 and bf16 (fused attention's fast build and cuBLASLt's epilogues, the defaults),
#      then bf16 with the products path (RADAR_ATTENTION=products);
#   5. where PyTorch and timm import: bench/pytorch_step.py on the same config, batch and GPU, eager
#      fp32, tf32 and AMP bf16.
#   6. data parallel on the GPU: two TCP ranks sharing it (`radar launch`, --allow-gpu-sharing),
#      gradient buckets through the copy stream and page-locked memory, replicas compared after
#      every step (--verify-replicas); then `radar bench allreduce --transport tcp --device cuda`
#      (staging and ring times apart).
#  6c. run to run: the same short training (the config, batch 16, 3 steps, one rank) twice in bf16
#      and twice in fp32; each pair's parameters must be bit-identical ("run_to_run").
#  6b. on a machine of several GPUs (the probe's device_count, or GPU_CHECK_GPUS), with time to
#      spare (never listed as skipped): one TCP rank per GPU (`radar launch -n G`, no sharing):
#      replicas compared after every step, each rank on its own GPU; `radar bench allreduce
#      --device cuda` at G ranks; and cluster/scaling.sh on 1, 2, 4, ... G ranks (config and
#      bf16's batch, synthetic 224 px images; the second of two epochs, warm): step time, images/s,
#      time waiting for images, all-reduce, overlap, efficiency.
#   7. with a minute to spare (never listed as skipped): bf16 again at its batch with fp32
#      activations (--bf16-activations false), then keeping the attention probabilities and GELU's
#      CDF (--recompute-in-backward false): what each memory choice costs or saves on this GPU.
#  7e. before step 7, with time to spare (never listed as skipped): the kernel check, golden cases
#      and the bf16 step with the fused attention kernels' plain build (RADAR_ATTENTION_KERNELS=plain;
#      the default is fast): "attention_plain_check" and a variant record.
#  7b. likewise with the bias fills instead of cuBLASLt's epilogues (RADAR_GEMM_EPILOGUES=off; on by
#      default): "gemm_fills_check" and a variant record.
#  7d. likewise with the fused attention kernels' ldmatrix build (RADAR_ATTENTION_KERNELS=ldmatrix):
#      "attention_ldmatrix_check" and a variant record.
#  7f. likewise with the staged LayerNorm backward (RADAR_LAYERNORM_BACKWARD=staged: dy and x read
#      once, through shared memory; the default is chunk): "layernorm_staged_check" and a variant
#      record ("layernorm_backward": "staged").
#  7c. with a minute to spare (never listed as skipped): `radar bench gemm` in bf16: each cuBLAS
#      product of a step timed as the step runs it and with each cuBLASLt algorithm offered, a
#      square 8192 product as the GPU's reference rate, and a table pinning the faster algorithms;
#      then the bf16 step with that table (RADAR_GEMM_TABLE), and where PyTorch runs,
#      bench/pytorch_gemm.py on the same products ("gemm_bench", "pytorch_gemm").
#   8. with a minute to spare (never listed as skipped): `radar bench serve` on the device (16
#      clients POSTing 224 px faces, dynamic batches of up to 64): requests/s and latency.
#  5b. with a minute to spare, where PyTorch ran (never listed as skipped): bf16 once more each,
#      ours then PyTorch's ("bf16_rematch"): PyTorch AMP's rate has moved by 40% between runs on
#      the same GPU, so a second pair in the same run shows how far one pair can be trusted.
#   9. with a minute to spare (never listed as skipped): `radar bench step --kernel-times` in bf16
#      with fused attention (the defaults), the same with the staged LayerNorm backward where 7f
#      passed, with the plain build where 7e passed and the ldmatrix build where 7d passed, bf16
#      with the products path, and fp32:
#      every kernel, cuBLAS product and FFT of a step timed with CUDA events.
# One JSON report on stdout (and in gpu-check.json, rewritten after every step, so a run stopped
# from outside still leaves what it measured), then a summary of its figures on standard error
# ("gpu-check summary: ..."); exit status 1 on any parity failure.
# GPU_CHECK_LOGS: a file to gather every step's log in at exit (the step logs are otherwise removed).
# GPU_CHECK_DEADLINE (seconds, default 420): steps 4-6 that would start after it are skipped and
# listed in the report, and each step's timeout is cut to the time left (a lent GPU's minutes are
# few: the report must come back).
#
#   tar xf radar-bundle.tar.xz && bash radar-bundle/gpu-check.sh
#
# Dry run without a GPU: GPU_CHECK_DEVICE=cuda-emulated GPU_CHECK_CONFIG=tiny GPU_CHECK_BATCH=4.
# GPU_CHECK_GEMM_SQUARE: the size of step 7c's reference product (default: radar bench gemm's).
# GPU_CHECK_OMIT: informational steps to leave out (a lent GPU's minutes are few; what an earlier
# run measured need not be measured again), space or comma separated: rematch (5b), memory (7),
# serve (8), and step 9's runs by name (kernel-times-bf16-fused, kernel-times-bf16-fused-lnstaged,
# kernel-times-bf16-fused-plain, kernel-times-bf16-fused-ldmatrix, kernel-times-bf16,
# kernel-times-fp32). Never a parity step.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
radar=${GPU_CHECK_RADAR:-$here/bin/radar}  # GPU_CHECK_RADAR: another build (the tests use the debug one)
[ -x "$radar" ] || radar="$here/../.build/release/radar"  # from a checkout: scripts/gpu-check.sh
device=${GPU_CHECK_DEVICE:-cuda}
config=${GPU_CHECK_CONFIG:-full}
batch=${GPU_CHECK_BATCH:-128}
repeats=${GPU_CHECK_REPEATS:-5}
step_timeout=${GPU_CHECK_STEP_TIMEOUT:-150}
serve_requests=${GPU_CHECK_SERVE_REQUESTS:-512}
deadline=${GPU_CHECK_DEADLINE:-420}
report=${GPU_CHECK_REPORT:-$PWD/gpu-check.json}
started=$(date +%s)
work=$(mktemp -d)
# GPU_CHECK_LOGS=FILE: every step's log (the last 300 lines of each) gathered there at exit.
keep_logs() {
  if [ -n "${GPU_CHECK_LOGS:-}" ]; then
    for f in "$work"/*.log; do [ -s "$f" ] && { echo "==> $(basename "$f") <=="; tail -n 300 "$f"; }; done > "$GPU_CHECK_LOGS" 2>/dev/null
  fi
  rm -rf "$work"
}
trap keep_logs EXIT
log() { echo "gpu-check: $*" >&2; }
# Seconds left before the deadline, and a timeout for a step: its own limit cut to the time left.
left() { echo $(( deadline - ($(date +%s) - started) )); }
limit() { local l; l=$(left); [ "$1" -lt "$l" ] && echo "$1" || echo "$(( l > 1 ? l : 1 ))"; }
: > "$work/skipped"
# Steps 4-6 start only with at least $1 seconds left; otherwise they are listed as skipped.
omitted() { local o=${GPU_CHECK_OMIT:-}; case " ${o//,/ } " in *" $1 "*) log "left out $1 (GPU_CHECK_OMIT)"; return 0 ;; esac; return 1; }
time_for() {
  if [ "$(left)" -ge "$1" ]; then return 0; fi
  log "skipped $2: $(left) s left of GPU_CHECK_DEADLINE=$deadline"
  echo "$2" >> "$work/skipped"
  return 1
}
check_status=1; dp_status=-1; allreduce_status=-1
: > "$work/check.log"; : > "$work/bench.jsonl"; : > "$work/pytorch.jsonl"; : > "$work/dp.out"; : > "$work/dp.log"
: > "$work/allreduce.jsonl"; : > "$work/allreduce.log"; : > "$work/variants.jsonl"; : > "$work/kernels.jsonl"; : > "$work/rematch.jsonl"
: > "$work/gemm.json"; : > "$work/pytorch-gemm.json"
bf16_batch=0

# CUDA libraries and headers from the Python environment (PyTorch's nvidia-* wheels) when the
# caller has not pointed RADAR_CUDA_LIBS elsewhere.
python=$(command -v python3 || command -v python || true)
if [ -z "${RADAR_CUDA_LIBS:-}" ] && [ -n "$python" ]; then
  libs=$("$python" - <<'PY' 2>/dev/null
import glob, os, site, sys
roots = set(site.getsitepackages() + [site.getusersitepackages()])
dirs = []
for r in sorted(roots):
    dirs += sorted(glob.glob(os.path.join(r, "nvidia", "*", "lib"))) + [os.path.join(r, "torch", "lib")]
print(":".join(d for d in dirs if os.path.isdir(d)))
PY
)
  [ -n "$libs" ] && export RADAR_CUDA_LIBS="$libs"
fi
if [ -z "${RADAR_CUDA_INCLUDE:-}" ]; then
  libs_list=${RADAR_CUDA_LIBS:-}
  for d in ${libs_list//:/ } /usr/local/cuda/lib64; do
    inc=$(dirname "$d")/include
    if [ -f "$inc/cuda_bf16.h" ]; then export RADAR_CUDA_INCLUDE="$inc"; break; fi
  done
fi
export RADAR_KERNEL_CACHE=${RADAR_KERNEL_CACHE:-$work/kernels}
log "device $device, config $config, batch $batch; RADAR_CUDA_LIBS=${RADAR_CUDA_LIBS:-} RADAR_CUDA_INCLUDE=${RADAR_CUDA_INCLUDE:-}"
if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader >&2; fi

# The JSON report from what the steps have left in $work, rewritten (atomically) after each step;
# `report final` marks it complete.
report() {
  GPU_CHECK_HERE="$here" "${python:-python3}" - "$work" "$check_status" "$report" "$dp_status" "$allreduce_status" "${1:-}" "$(( $(date +%s) - started ))" "${fills_status:--1}" "${gemm_status:--1}" "${ldmatrix_status:--1}" "${plain_status:--1}" "${multi_status:--1}" "${gpus:-1}" "${det_status:--1}" "${lnstaged_status:--1}" <<'PY'
import json, os, sys
work, status, out, dp_status, ar_status, final, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "final", int(sys.argv[7])
fills_status, gemm_status, ldmatrix_status, plain_status = int(sys.argv[8]), int(sys.argv[9]), int(sys.argv[10]), int(sys.argv[11])
multi_status, gpus, det_status, lnstaged_status = int(sys.argv[12]), int(sys.argv[13]), int(sys.argv[14]), int(sys.argv[15])
def text(p, n):
    try:
        with open(p, errors="replace") as f:  # a log may hold bytes that are not UTF-8
            return f.read()[-n:]
    except OSError:
        return ""
def lines(p):
    try:
        return [json.loads(l) for l in open(p) if l.strip().startswith("{")]
    except Exception as e:
        return [{"error": str(e)}]
try:
    check = json.load(open(work + "/check.json"))
except Exception:
    check = {"error": text(work + "/check.log", 2000)}
hashes = [l.split()[4] for l in text(work + "/dp.out", 100000).splitlines() if "fnv1a" in l]
dp_log = text(work + "/dp.log", 1000000)
dp = {"exit": dp_status, "hashes": hashes, "replicas_identical": len(hashes) == 2 and len(set(hashes)) == 1,
      "copy_stream": "via two copy streams (down, up) and page-locked host memory" in dp_log, "log_tail": dp_log[-1500:]}
dp["passed"] = dp_status == 0 and dp["replicas_identical"] and dp["copy_stream"]
skipped = [l.strip() for l in text(work + "/skipped", 100000).splitlines() if l.strip()]
multi = None  # step 6b, on a machine of several GPUs
if multi_status >= 0:
    mlog = text(work + "/multi.log", 1000000)
    mh = [l.split()[4] for l in text(work + "/multi.out", 100000).splitlines() if "fnv1a" in l]
    # Each rank says which GPU it took: "... (host H, local rank L of G): cuda:L (...)".
    own = sorted({l.split("): ")[1].split(" ")[0] for l in mlog.splitlines() if "radar-worker rank" in l and "): cuda" in l})
    multi = {"gpus": gpus, "exit": multi_status, "hashes": mh, "replicas_identical": len(mh) == gpus and len(set(mh)) == 1,
             "gpus_used": own, "allreduce": lines(work + "/multi-allreduce.jsonl"), "scaling": lines(work + "/scaling.jsonl"),
             "log_tail": mlog[-1500:], "scaling_log_tail": text(work + "/scaling.log", 1500)}
    multi["passed"] = multi_status == 0 and multi["replicas_identical"] and len(own) == gpus
run_to_run = None  # step 6c
if det_status >= 0:
    def det_hashes(p):
        return [l.split()[4] for r in (1, 2) for l in text(f"{work}/det-{p}-{r}.out", 100000).splitlines() if "fnv1a" in l]
    run_to_run = {"exit": det_status, "bf16": det_hashes("bf16"), "fp32": det_hashes("fp32"), "log_tail": text(work + "/det.log", 1500)}
    run_to_run["identical"] = all(len(run_to_run[p]) == 2 and len(set(run_to_run[p])) == 1 for p in ("bf16", "fp32"))
    run_to_run["passed"] = det_status == 0 and run_to_run["identical"]
def setting_check(name, status):  # steps 7b, 7d, 7e and 7f, when they ran
    if status < 0:
        return None
    try:
        r = json.load(open(work + "/" + name + "-check.json"))
    except Exception:
        r = {"error": text(work + "/" + name + "-check.log", 2000)}
    r["exit"] = status
    r["passed"] = status == 0 and bool(r.get("passed"))
    return r
fills, ldmatrix, plain = setting_check("fills", fills_status), setting_check("ldmatrix", ldmatrix_status), setting_check("plain", plain_status)
lnstaged = setting_check("lnstaged", lnstaged_status)
gemm = None  # step 7c, when it ran (informational)
if gemm_status >= 0:
    gemm = {"exit": gemm_status, "radar": (lines(work + "/gemm.json") or [None])[0], "pytorch": (lines(work + "/pytorch-gemm.json") or [None])[0],
            "log_tail": text(work + "/gemm.log", 1500)}
# Products whose epilogue cuBLASLt had no algorithm for on this GPU (the bias filled instead),
# as any step logged them: each shape once.
import glob
fallbacks = sorted({l.strip() for f in glob.glob(work + "/*.log") for l in text(f, 1000000).splitlines()
                    if "offers no algorithm with a bias epilogue" in l})
def os_name():
    try:
        for l in open("/etc/os-release"):
            if l.startswith("PRETTY_NAME="):
                return l.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return None
try:
    glibc = os.confstr("CS_GNU_LIBC_VERSION")
except (ValueError, OSError):
    glibc = None
rep = {"system": {"os": os_name(), "glibc": glibc, "bundle_needs_glibc": text(os.environ.get("GPU_CHECK_HERE", ".") + "/share/glibc-version", 100).strip() or None,
                  "radar_runs_on_glibc": (check.get("probe") or {}).get("glibc")},
       "check": check, "epilogue_fallbacks": fallbacks[:50], "gemm_bench": gemm, "radar_bench_step": lines(work + "/bench.jsonl"), "pytorch_step": lines(work + "/pytorch.jsonl"),
       "radar_bench_step_variants": lines(work + "/variants.jsonl"), "radar_bench_serve": lines(work + "/serve.jsonl"),
       "radar_kernel_times": lines(work + "/kernels.jsonl"), "bf16_rematch": lines(work + "/rematch.jsonl"),
       "data_parallel": dp, "allreduce": lines(work + "/allreduce.jsonl"),
       "allreduce_exit": ar_status, "allreduce_log_tail": text(work + "/allreduce.log", 1500),
       "skipped": skipped, "complete": final, "seconds": seconds, "gemm_fills_check": fills, "attention_ldmatrix_check": ldmatrix,
       "attention_plain_check": plain, "layernorm_staged_check": lnstaged, "several_gpus": multi, "run_to_run": run_to_run,
       "passed": final and status == 0 and bool(check.get("passed")) and dp["passed"] and ar_status == 0 and not skipped
                 and run_to_run is not None and run_to_run["passed"]
                 and (multi is None or multi["passed"])
                 and all(c is None or c["passed"] for c in (fills, ldmatrix, plain, lnstaged))}
tmp = out + ".tmp"
with open(tmp, "w") as f:
    f.write(json.dumps(rep, indent=1, sort_keys=True) + "\n")
os.replace(tmp, out)
PY
}

# 1-3: probe, kernels, golden parity.
t0=$(date +%s)
timeout "$(limit 300)" "$radar" check-device --device "$device" > "$work/check.json" 2> "$work/check.log"
check_status=$?
tail -n 20 "$work/check.log" >&2
log "check-device exit $check_status ($(( $(date +%s) - t0 )) s)"
report

# 4: our step in each precision, halving the batch until it fits.
for p in fp32 tf32 bf16; do
  b=$batch
  while [ "$b" -ge 1 ] && time_for 30 "radar bench step $p"; do
    if timeout "$(limit "$step_timeout")" "$radar" bench step --device "$device" --precision "$p" --config "$config" --batch "$b" \
        --repeats "$repeats" >> "$work/bench.jsonl" 2> "$work/bench-$p.log"; then
      log "radar bench step $p batch $b: $(tail -1 "$work/bench.jsonl" | head -c 300)"
      [ "$p" = bf16 ] && bf16_batch=$b
      break
    fi
    log "radar bench step $p batch $b failed: $(tail -1 "$work/bench-$p.log")"
    if grep -q "out of device memory" "$work/bench-$p.log"; then b=$((b / 2)); else break; fi
  done
  report
done
# bf16 with the products path for attention (RADAR_ATTENTION=products; the default is the fused
# kernels) at bf16's batch: the records' "attention" field tells the two bf16 runs apart.
if time_for 30 "radar bench step bf16 products attention" && [ "$bf16_batch" -ge 1 ]; then
  RADAR_ATTENTION=products timeout "$(limit "$step_timeout")" "$radar" bench step --device "$device" --precision bf16 --config "$config" \
    --batch "$bf16_batch" --repeats "$repeats" >> "$work/bench.jsonl" 2> "$work/bench-bf16-products.log" \
    && log "radar bench step bf16 products attention batch $bf16_batch: $(tail -1 "$work/bench.jsonl" | head -c 300)" \
    || log "radar bench step bf16 products attention failed: $(tail -1 "$work/bench-bf16-products.log")"
  report
fi

# 5: PyTorch on the same GPU, where it is installed.
bench_py="$here/share/bench/pytorch_step.py"
[ -f "$bench_py" ] || bench_py="$here/../bench/pytorch_step.py"
if [ -n "$python" ] && [ "$device" != "cuda-emulated" ] && "$python" -c "import torch, timm; assert torch.cuda.is_available()" 2>/dev/null; then
  for p in fp32 tf32 bf16; do
    time_for 45 "pytorch_step.py $p" || continue
    timeout "$(limit "$step_timeout")" "$python" "$bench_py" --config "$config" --batch "$batch" --device cuda --precision "$p" \
      --repeats "$repeats" >> "$work/pytorch.jsonl" 2> "$work/pytorch-$p.log" \
      && log "pytorch $p: $(tail -1 "$work/pytorch.jsonl")" || log "pytorch $p failed: $(tail -3 "$work/pytorch-$p.log" | tr '\n' ' ')"
    report
  done
  # 5b: a second bf16 pair, ours then PyTorch's, with time to spare.
  if [ "$bf16_batch" -ge 1 ] && [ "$(left)" -ge 90 ] && ! omitted rematch; then
    timeout "$(limit "$step_timeout")" "$radar" bench step --device "$device" --precision bf16 --config "$config" --batch "$bf16_batch" \
      --repeats "$repeats" >> "$work/rematch.jsonl" 2> "$work/rematch-radar.log" \
      && log "rematch radar bf16: $(tail -1 "$work/rematch.jsonl" | head -c 200)" || log "rematch radar bf16 failed: $(tail -1 "$work/rematch-radar.log")"
    timeout "$(limit "$step_timeout")" "$python" "$bench_py" --config "$config" --batch "$bf16_batch" --device cuda --precision bf16 \
      --repeats "$repeats" >> "$work/rematch.jsonl" 2> "$work/rematch-pytorch.log" \
      && log "rematch pytorch bf16: $(tail -1 "$work/rematch.jsonl")" || log "rematch pytorch bf16 failed: $(tail -3 "$work/rematch-pytorch.log" | tr '\n' ' ')"
    report
  fi
else
  log "PyTorch with CUDA not available: no PyTorch comparison"
fi

# 6: two data-parallel ranks on the one GPU.
dp_env=()
[ "$device" = cuda-emulated ] && dp_env=(RADAR_CUDA_DRIVER=emulator RADAR_EMULATED_DEVICES=1)
if time_for 40 "data parallel"; then
"$radar" synth --output "$work/dp-data" --count 96 --size 32 > /dev/null 2>&1
env "${dp_env[@]}" timeout "$(limit 300)" "$radar" launch -n 2 -- radar-worker --device cuda --allow-gpu-sharing --data "$work/dp-data" \
  --output "$work/dp-out" --experiment dp --config tiny --batch-size 8 --num-epochs 1 --max-steps-per-epoch 3 \
  --accumulation-steps 1 --bucket-mb 0 --verify-replicas --threads 1 --timeout 120 > "$work/dp.out" 2> "$work/dp.log"
dp_status=$?
log "data parallel (2 ranks on one GPU) exit $dp_status: $(grep -E 'fnv1a' "$work/dp.out" | tr '\n' ' ')"
grep -q "copy stream" "$work/dp.log" || log "data parallel: the ranks did not report the copy stream: $(tail -3 "$work/dp.log" | tr '\n' ' ')"
report
fi
if time_for 20 "radar bench allreduce"; then
# `radar launch` picks a free port (a fixed one may be taken on a shared host) and a job token;
# only rank 0 prints the records.
env "${dp_env[@]}" timeout "$(limit 180)" "$radar" launch -n 2 -- "$radar" bench allreduce --transport tcp --device cuda --sizes 8,88 \
  --repeats 3 > "$work/allreduce.jsonl" 2> "$work/allreduce.log"
allreduce_status=$?
[ $allreduce_status = 0 ] || log "allreduce failed (exit $allreduce_status): $(tail -5 "$work/allreduce.log" | tr '\n' ' ')"
log "allreduce: $(head -c 400 "$work/allreduce.jsonl")"
fi

# 6c: run to run, bf16 and fp32: the same seed, data and steps twice, the parameters' hashes equal
# (no atomics in a reduction, fixed cuBLAS algorithms and workspace: nothing may differ).
det_status=-1
if time_for 40 "run to run"; then
  det_size=224; [ "$config" = tiny ] && det_size=32
  "$radar" synth --output "$work/det-data" --count 96 --size "$det_size" > /dev/null 2>&1
  det_status=0
  for p in bf16 fp32; do
    for run in 1 2; do
      env "${dp_env[@]}" timeout "$(limit 150)" "$radar" launch -n 1 -- radar-worker --device cuda --precision "$p" --data "$work/det-data" \
        --output "$work/det-$p-$run" --experiment det --config "$config" --batch-size 16 --num-epochs 1 --max-steps-per-epoch 3 \
        --accumulation-steps 1 --threads 1 --timeout 120 > "$work/det-$p-$run.out" 2>> "$work/det.log" || det_status=1
    done
    log "run to run $p: $(grep -h fnv1a "$work/det-$p-1.out" "$work/det-$p-2.out" | awk '{print $5}' | tr '\n' ' ')"
  done
  report
fi

# 6b: several GPUs, one rank each (issue 11's measurements), with time to spare. A failure here
# fails the report like any other.
multi_status=-1
gpus=${GPU_CHECK_GPUS:-$("${python:-python3}" -c 'import json,sys; print(json.load(open(sys.argv[1]))["probe"].get("device_count", 1))' "$work/check.json" 2>/dev/null || echo 1)}
if [ "$gpus" -ge 2 ] && [ "$(left)" -ge 90 ]; then
  mg_env=()
  [ "$device" = cuda-emulated ] && mg_env=(RADAR_CUDA_DRIVER=emulator RADAR_EMULATED_DEVICES=$gpus)
  [ -d "$work/dp-data" ] || "$radar" synth --output "$work/dp-data" --count 96 --size 32 > /dev/null 2>&1
  env "${mg_env[@]}" timeout "$(limit 300)" "$radar" launch -n "$gpus" -- radar-worker --device cuda --data "$work/dp-data" \
    --output "$work/mg-out" --experiment mg --config tiny --batch-size 8 --num-epochs 1 --max-steps-per-epoch 3 \
    --accumulation-steps 1 --verify-replicas --threads 1 --timeout 120 > "$work/multi.out" 2> "$work/multi.log"
  multi_status=$?
  log "data parallel ($gpus ranks, one GPU each) exit $multi_status: $(grep -E 'fnv1a' "$work/multi.out" | tr '\n' ' ')"
  report
  if [ "$(left)" -ge 40 ]; then
    env "${mg_env[@]}" timeout "$(limit 180)" "$radar" launch -n "$gpus" -- "$radar" bench allreduce --transport tcp --device cuda \
      --sizes 8,88 --repeats 3 > "$work/multi-allreduce.jsonl" 2> "$work/multi-allreduce.log" \
      && log "allreduce at $gpus ranks: $(head -c 400 "$work/multi-allreduce.jsonl")" \
      || log "allreduce at $gpus ranks failed: $(tail -3 "$work/multi-allreduce.log" | tr '\n' ' ')"
    report
  fi
  scaling="$here/cluster/scaling.sh"
  [ -f "$scaling" ] || scaling="$here/../cluster/scaling.sh"
  sb=$bf16_batch; [ "$sb" -ge 1 ] || sb=$batch
  ranks=(); n=1; while [ "$n" -le "$gpus" ]; do ranks+=("$n"); n=$((n * 2)); done
  [ "${ranks[-1]}" = "$gpus" ] || ranks+=("$gpus")
  steps=${GPU_CHECK_SCALING_STEPS:-6}
  size=224; [ "$config" = tiny ] && size=32
  if [ "$(left)" -ge 90 ]; then
    # Enough training images for the largest run (the synthetic set keeps about 70% for training).
    timeout "$(limit 120)" "$radar" synth --output "$work/scale-data" --count $(( gpus * sb * steps * 3 / 2 + 64 )) --size "$size" > /dev/null 2> "$work/scale-synth.log"
    env "${mg_env[@]}" RADAR_BIN="$(dirname "$radar")" timeout "$(limit 400)" bash "$scaling" "$work/scale-data" "${ranks[@]}" -- \
      --transport tcp --device cuda --config "$config" --batch-size "$sb" --steps "$steps" --epochs 2 --threads 1 --json \
      > "$work/scaling.jsonl" 2> "$work/scaling.log" \
      && log "scaling: $(tr '\n' ' ' < "$work/scaling.jsonl" | head -c 600)" \
      || log "scaling failed: $(tail -5 "$work/scaling.log" | tr '\n' ' ')"
    report
  fi
fi

# 7e, 7b, 7d: the settings other than the defaults, only with time to spare: the kernel check and
# golden cases with the setting, then the bf16 step with it (a variant record). A parity
# failure here fails the report like any other. `setting_check SETTING=VALUE NAME` sets NAME_status
# (-1: not run) and leaves NAME-check.json.
setting_check() {
  printf -v "${2}_status" '%s' -1; : > "$work/$2-check.json"
  [ "$bf16_batch" -ge 1 ] && [ "$(left)" -ge 90 ] || return 0
  env "$1" timeout "$(limit 300)" "$radar" check-device --device "$device" > "$work/$2-check.json" 2> "$work/$2-check.log"
  local status=$?
  printf -v "${2}_status" '%s' "$status"
  log "check-device with $1: exit $status"
  report
  if [ "$(left)" -ge 60 ]; then
    env "$1" timeout "$(limit "$step_timeout")" "$radar" bench step --device "$device" --precision bf16 --config "$config" \
      --batch "$bf16_batch" --repeats "$repeats" >> "$work/variants.jsonl" 2> "$work/variant.log" \
      && log "radar bench step bf16 $1: $(tail -1 "$work/variants.jsonl" | head -c 300)" \
      || log "radar bench step bf16 $1 failed: $(tail -1 "$work/variant.log")"
    report
  fi
}
# 7e first, before step 7: the fused attention kernels' plain build (RADAR_ATTENTION_KERNELS=plain;
# "attention_kernels": "plain"; the default until an H100 timed fast 10% ahead); step 9 times its kernels.
setting_check RADAR_ATTENTION_KERNELS=plain plain
# 7f, also before step 7: the staged LayerNorm backward (RADAR_LAYERNORM_BACKWARD=staged;
# "layernorm_backward": "staged"; not yet timed on a GPU); step 9 times its kernels.
setting_check RADAR_LAYERNORM_BACKWARD=staged lnstaged

# 7: the memory plan's choices in bf16, informational, only with time to spare.
for variant in "--bf16-activations false" "--recompute-in-backward false"; do
  [ "$bf16_batch" -ge 1 ] && [ "$(left)" -ge 60 ] && ! omitted memory || break
  # shellcheck disable=SC2086 # the variant is two words on purpose
  timeout "$(limit "$step_timeout")" "$radar" bench step --device "$device" --precision bf16 --config "$config" --batch "$bf16_batch" \
    --repeats "$repeats" $variant >> "$work/variants.jsonl" 2> "$work/variant.log" \
    && log "radar bench step bf16 $variant: $(tail -1 "$work/variants.jsonl" | head -c 300)" \
    || log "radar bench step bf16 $variant failed: $(tail -1 "$work/variant.log")"
  report
done

# 7b: the bias fills (RADAR_GEMM_EPILOGUES=off): every Linear's bias (and the encoder's residual
# sums) written before the product instead of in cuBLASLt's epilogue ("gemm_epilogues": false).
setting_check RADAR_GEMM_EPILOGUES=off fills
# 7d: the fused attention kernels' ldmatrix build (RADAR_ATTENTION_KERNELS=ldmatrix; "attention_kernels":
# "ldmatrix"); step 9 times its kernels.
setting_check RADAR_ATTENTION_KERNELS=ldmatrix ldmatrix

# 7c: the products one by one, informational, only with time to spare.
gemm_status=-1
gemm_py="$here/share/bench/pytorch_gemm.py"
[ -f "$gemm_py" ] || gemm_py="$here/../bench/pytorch_gemm.py"
if [ "$bf16_batch" -ge 1 ] && [ "$(left)" -ge 60 ]; then
  timeout "$(limit "$step_timeout")" "$radar" bench gemm --device "$device" --precision bf16 --config "$config" --batch "$bf16_batch" \
    ${GPU_CHECK_GEMM_SQUARE:+--square "$GPU_CHECK_GEMM_SQUARE"} --write-table "$work/gemm-table.json" > "$work/gemm.json" 2> "$work/gemm.log"
  gemm_status=$?
  log "radar bench gemm exit $gemm_status: $(head -c 400 "$work/gemm.json")"
  report
  if [ "$gemm_status" -eq 0 ] && [ "$(left)" -ge 45 ]; then
    RADAR_GEMM_TABLE="$work/gemm-table.json" timeout "$(limit "$step_timeout")" "$radar" bench step --device "$device" --precision bf16 \
      --config "$config" --batch "$bf16_batch" --repeats "$repeats" >> "$work/variants.jsonl" 2> "$work/variant.log" \
      && log "radar bench step bf16 RADAR_GEMM_TABLE: $(tail -1 "$work/variants.jsonl" | head -c 300)" \
      || log "radar bench step bf16 RADAR_GEMM_TABLE failed: $(tail -1 "$work/variant.log")"
    report
  fi
  if [ "$gemm_status" -eq 0 ] && [ -n "$python" ] && [ "$device" != "cuda-emulated" ] && [ "$(left)" -ge 30 ] \
      && "$python" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    timeout "$(limit "$step_timeout")" "$python" "$gemm_py" --shapes "$work/gemm.json" > "$work/pytorch-gemm.json" 2>> "$work/gemm.log" \
      && log "pytorch_gemm.py: $(head -c 200 "$work/pytorch-gemm.json")" || log "pytorch_gemm.py failed: $(tail -3 "$work/gemm.log" | tr '\n' ' ')"
    report
  fi
fi

# 8: the service under load, informational, only with time to spare.
if [ "$(left)" -ge 60 ] && ! omitted serve; then
  timeout "$(limit "$step_timeout")" "$radar" bench serve --device "$device" --config "$config" --clients 16 \
    --requests "$serve_requests" --batch-size 64 --image-size 224 > "$work/serve.jsonl" 2> "$work/serve.log" \
    && log "radar bench serve: $(head -c 300 "$work/serve.jsonl")" \
    || log "radar bench serve failed: $(tail -1 "$work/serve.log")"
  report
fi

# 9: where a step's time goes, informational, only with time to spare.
for run in bf16-fused bf16-fused-lnstaged bf16-fused-plain bf16-fused-ldmatrix bf16 fp32; do
  [ "$device" != cuda-emulated ] && [ "$(left)" -ge 60 ] || break
  omitted "kernel-times-$run" && continue
  p=${run%%-*}; attention=products; kernels=fast; layernorm=chunk
  case $run in bf16-fused*) attention=fused ;; esac
  case $run in *-lnstaged) layernorm=staged; [ "$lnstaged_status" = 0 ] || continue ;; esac
  case $run in *-plain) kernels=plain; [ "$plain_status" = 0 ] || continue ;; esac
  case $run in *-ldmatrix) kernels=ldmatrix; [ "$ldmatrix_status" = 0 ] || continue ;; esac
  kb=$batch; [ "$p" = bf16 ] && [ "$bf16_batch" -ge 1 ] && kb=$bf16_batch
  RADAR_ATTENTION=$attention RADAR_ATTENTION_KERNELS=$kernels RADAR_LAYERNORM_BACKWARD=$layernorm timeout "$(limit "$step_timeout")" "$radar" bench step --device "$device" --precision "$p" --config "$config" \
    --batch "$kb" --repeats 3 --kernel-times >> "$work/kernels.jsonl" 2> "$work/kernels-$run.log" \
    && log "radar bench step $run --kernel-times: $(tail -1 "$work/kernels.jsonl" | head -c 300)" \
    || log "radar bench step $run --kernel-times failed: $(tail -1 "$work/kernels-$run.log")"
  report
done

report final
cat "$report"
# The figures a reader wants first, on standard error: a lent GPU's minutes are few, and the
# report is long.
"${python:-python3}" - "$report" <<'PY' >&2 || log "the summary failed (the report above is complete)"
import json, sys
r = json.load(open(sys.argv[1]))
c = r.get("check") or {}
p = c.get("probe") or {}
def f(v, d=1):
    return "-" if v is None else ("%.*f" % (d, v) if isinstance(v, float) else str(v))
print("gpu-check summary: passed %s, complete %s, %s s, skipped %s" % (r.get("passed"), r.get("complete"), r.get("seconds"), r.get("skipped") or "none"))
print("  %s, compute capability %s; kernels %s/%s, golden %s" % (p.get("device"), p.get("compute_capability"), c.get("kernels_passed"),
      c.get("kernels_total"), len(c.get("golden") or [])))
sysinfo = r.get("system") or {}
print("  system: %s, %s (the bundle needs glibc %s; radar ran on %s)" % (sysinfo.get("os"), sysinfo.get("glibc"), sysinfo.get("bundle_needs_glibc"),
      sysinfo.get("radar_runs_on_glibc")))
d, t = r.get("data_parallel") or {}, r.get("run_to_run") or {}
print("  two ranks on the GPU: %s; run to run: %s (bf16 %s, fp32 %s)" % ("identical" if d.get("passed") else "FAILED",
      "identical" if t.get("passed") else "FAILED or not run", " ".join(t.get("bf16") or []), " ".join(t.get("fp32") or [])))
for name in ("attention_plain_check", "layernorm_staged_check", "gemm_fills_check", "attention_ldmatrix_check"):
    v = r.get(name)
    if v:
        print("  %s: %s (%s/%s kernels)" % (name, "passed" if v.get("passed") else "FAILED", v.get("kernels_passed"), v.get("kernels_total")))
print("  epilogue fallbacks: %s" % (r.get("epilogue_fallbacks") or "none"))
print("  %-8s %-5s %-9s %-8s %-6s %-5s %-6s %5s %9s %9s %9s" % ("step", "prec", "attention", "kernels", "LN bwd", "epilo", "pinned", "batch",
      "ms/step", "img/s", "peak MiB"))
rows = [("radar", b) for b in r.get("radar_bench_step") or []] + [("variant", b) for b in r.get("radar_bench_step_variants") or []]
rows += [("pytorch", b) for b in r.get("pytorch_step") or []] + [("rematch", b) for b in r.get("bf16_rematch") or []]
for who, b in rows:
    epi = {True: "yes", False: "no"}.get(b.get("gemm_epilogues"), "-")
    act = "" if b.get("bf16_activations", True) and b.get("recompute_in_backward", True) else (" (fp32 activations)" if not b.get("bf16_activations", True) else " (no recompute)")
    print("  %-8s %-5s %-9s %-8s %-6s %-5s %-6s %5s %9s %9s %9s%s" % (who, b.get("precision", "-"), b.get("attention", "-"), b.get("attention_kernels", "-"),
          b.get("layernorm_backward", "-"), epi, f(b.get("pinned_products_per_step"), 0), b.get("batch", "-"), f(b.get("ms_per_step"), 2),
          f(b.get("images_per_s")), f(b.get("peak_device_mib"), 0), act if b.get("precision") == "bf16" and who != "pytorch" else ""))
for k in r.get("radar_kernel_times") or []:
    km = k.get("kernel_ms") or {}
    by = {e.get("name"): e for e in km.get("by_kernel") or []}
    ln = ", ".join("%s %s ms (%s calls)" % (n.replace("radar_layernorm_backward_", ""), f(by[n].get("ms_per_step"), 3), f(by[n].get("calls_per_step"), 0))
                   for n in ("radar_layernorm_backward_chunk", "radar_layernorm_backward_staged", "radar_layernorm_backward_input") if n in by)
    top = ", ".join("%s %s" % (e.get("name"), f(e.get("ms_per_step"), 2)) for e in (km.get("by_kernel") or [])[:6])
    print("  kernel times %s %s %s/%s/%s: total %s ms, cuBLAS %s; LayerNorm backward: %s; top: %s" % (k.get("precision"), k.get("attention"),
          k.get("attention_kernels"), k.get("layernorm_backward"), k.get("gemm_epilogues"), f(km.get("total_ms_per_step"), 2),
          f(km.get("gemm_ms_per_step"), 2), ln or "-", top))
for a in r.get("allreduce") or []:
    print("  allreduce %s MB, %s ranks: ring %s s, staging down %s s, up %s s, all three %s s; in %s buckets as the trainer stages them %s s" % (
          a.get("mb"), a.get("ranks"), f(a.get("ring_seconds"), 4), f(a.get("staging_download_seconds"), 4), f(a.get("staging_upload_seconds"), 4),
          f(a.get("device_total_seconds"), 4), a.get("buckets"), f(a.get("bucketed_seconds"), 4)))
m = r.get("several_gpus")
if m:
    print("  several GPUs (%s): %s, used %s" % (m.get("gpus"), "identical" if m.get("passed") else "FAILED", m.get("gpus_used")))
    for s in m.get("scaling") or []:
        print("    %s ranks: step %s s, %s img/s, all-reduce %s s, overlap %s, efficiency %s, data wait %s s (rank %s)" % (
              s.get("ranks"), f(s.get("step_seconds"), 4), f(s.get("images_per_s")), f(s.get("allreduce_seconds"), 4),
              f(s.get("overlap_fraction"), 2), f(s.get("scaling_efficiency"), 2), f(s.get("data_wait_seconds"), 4), s.get("data_wait_rank")))
PY
# Steps 6b's and 6c's verdicts are the report's (every rank's hash the same, each rank on a GPU of
# its own; each pair of runs the same).
multi_ok=$("${python:-python3}" -c 'import json, sys; m = json.load(open(sys.argv[1]))["several_gpus"]; print(int(m is None or m["passed"]))' "$report")
det_ok=$("${python:-python3}" -c 'import json, sys; d = json.load(open(sys.argv[1]))["run_to_run"]; print(int(d is not None and d["passed"]))' "$report")
[ "$check_status" -eq 0 ] && [ "$dp_status" -eq 0 ] && [ "$allreduce_status" -eq 0 ] && [ ! -s "$work/skipped" ] && [ "$multi_ok" = 1 ] && [ "$det_ok" = 1 ]
