#!/usr/bin/env bash
# Installs the system packages if missing, prepares a small Python environment for the file-format
# interop tests (numpy, safetensors, lz4 from PyPI), builds, and runs every test (unit, gradient
# checks, PyTorch fixtures, data pipeline, checkpoints, multi-process MPI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
venv=.build/pyvenv
# numpy, safetensors, lz4: the file-format interop tests. NVRTC and the CUDA runtime headers
# (about 95 MB of wheels, no GPU needed): the CUDA kernels' compile gate. NVIDIA DALI (about 600 MB
# of wheels; its CPU-only pipeline needs no GPU): reads the shards through our index files.
# TensorBoard (about 28 MB of wheels with grpcio, pillow and protobuf): reads a run's event files.
# huggingface_hub (a few MB with httpx): finds what --pretrained hf-hub: downloaded, and downloads
# into the cache from the test's stand-in Hub for us to find. ONNX Runtime (about 28 MB of wheels
# with flatbuffers and protobuf): runs what radar export-onnx writes against our own forward.
# Pillow (TensorBoard brings it; pinned, since its bundled libjpeg-turbo is a reference): the
# image decoder's byte-for-byte reference (ImageDecodeReferenceTests).
PY_PACKAGES="numpy safetensors lz4 nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-runtime-cu12==12.9.79 nvidia-dali-cuda120==2.4.0 tensorboard==2.21.0 huggingface_hub==2.4.0 onnxruntime==1.32.0 pillow==13.0.0"
have_packages() {
  "$1" -c "import numpy, safetensors, lz4, nvidia.dali, tensorboard, huggingface_hub, onnxruntime, PIL" 2>/dev/null &&
    "$1" -c "import nvidia, os, sys; p = os.path.join(list(nvidia.__path__)[0], 'cuda_nvrtc', 'lib', 'libnvrtc.so.12'); sys.exit(0 if os.path.exists(p) else 1)" 2>/dev/null
}
if [ ! -x "$venv/bin/python" ] || ! have_packages "$venv/bin/python"; then
  if python3 -m venv "$venv" 2>/dev/null; then
    # shellcheck disable=SC2086
    "$venv/bin/pip" install --quiet --disable-pip-version-check $PY_PACKAGES
  else
    # No venv module (Debian's python3 without python3-venv): install for the user instead.
    # shellcheck disable=SC2086
    python3 -m pip install --quiet --user $PY_PACKAGES 2>/dev/null \
      || python3 -m pip install --quiet --user --break-system-packages $PY_PACKAGES
    venv=""
  fi
fi
if [ -n "$venv" ]; then export RADAR_PYTHON="$PWD/$venv/bin/python"; else export RADAR_PYTHON=python3; fi
# NVIDIA's CUDA 12.9 and 13.0 headers and CUDA 13.0's NVRTC (wheels downloaded, headers kept, about
# 150 MB; once per checkout): the ABI gate compares every CUDA function and constant we declare
# with them, and the compile gate runs NVRTC 13 beside 12.
"$RADAR_PYTHON" tools/cuda_headers.py .build/cuda-headers
export RADAR_CUDA_HEADERS="$PWD/.build/cuda-headers"
export OPENBLAS_NUM_THREADS=1
swift build --build-tests
# Every file and folder the tests make (datasets, runs, checkpoints, sockets, OpenMPI's session
# folders) goes under one folder of this run: TMPDIR for the test processes and all they start.
# It is removed when every test passed and kept, and named, when one failed (a full run left about
# 500 folders and 1.5 GB in /tmp, a run after run). Sticky and world-writable as /tmp is: some
# tests run radar as nobody.
scratch=$(mktemp -d "${TMPDIR:-/tmp}/radar-tests.XXXXXX")
chmod 1777 "$scratch"
total=0
failed=0
status=0
# Runs `swift test` with the given environment and arguments, adding XCTest's totals to ours
# (swift test ends with Swift Testing's own summary, which counts only swift-testing tests: none).
run_tests() {
  local log rc summary
  log=$(mktemp)
  set +e
  env "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  summary=$(grep -E "Executed [0-9]+ tests?, with [0-9]+ failures?" "$log" | tail -n 1 || true)  # none when it crashed first
  rm -f "$log"
  local count=0 failures=0
  if [ -n "$summary" ]; then
    count=$(echo "$summary" | sed -E 's/.*Executed ([0-9]+) tests?.*/\1/')
    failures=$(echo "$summary" | sed -E 's/.*with ([0-9]+) failures?.*/\1/')
  fi
  # A test process that crashed is rerun by swift test for the tests after the crash, and the last
  # summary is then only that rerun's: a non-zero exit with no failure counted is one failure.
  if [ "$rc" -ne 0 ] && [ "$failures" -eq 0 ]; then failures=1; fi
  total=$((total + count))
  failed=$((failed + failures))
  if [ "$rc" -ne 0 ]; then status=$rc; fi
}
# Every suite on the CPU device.
run_tests TMPDIR="$scratch" RADAR_TEST_BACKEND=cpu swift test
# The engine suites again on the fenced device (tensor memory inaccessible to the host outside
# backend calls), so a host access that bypasses the backend fails here.
echo "== engine suites on the fenced device (RADAR_TEST_BACKEND=cpu-fenced) =="
run_tests TMPDIR="$scratch" RADAR_TEST_BACKEND=cpu-fenced RADAR_DEVICE=cpu-fenced swift test --skip-build --filter RadarCoreTests
# The CUDA backend on the emulated device (its kernels compiled for the host, device memory
# fenced off from the host): the engine suites again, as on the fenced device (kernel references,
# every layer's gradient check, the four golden PyTorch cases, training, skipping, clipping,
# stop/resume giving the uninterrupted run's bits, ...; about 5 minutes). Less one: the emulated
# device allocates on the host at every launch (its schedule, the fibers' state), so the
# allocation count of a step is asserted for the CUDA backend on the fake driver instead
# (FakeDriverTests, in the first pass), where the driver's own allocations are set apart.
echo "== CUDA backend on the emulated device (RADAR_TEST_BACKEND=cuda-emulated) =="
run_tests TMPDIR="$scratch" RADAR_TEST_BACKEND=cuda-emulated RADAR_DEVICE=cuda-emulated swift test --skip-build --filter RadarCoreTests \
  --skip "ModelTests.testTrainingStepAllocatesNothingAfterWarmUp"
# The bundle for bare GPU pods: built (static Swift standard library), then run with the Swift
# toolchain, headers and this machine's copies of its libraries out of sight.
echo "== the bundle (scripts/bundle.sh, scripts/check-bundle.sh) =="
total=$((total + 1))
if ! { bash scripts/bundle.sh .build/radar-bundle.tar.xz && bash scripts/check-bundle.sh .build/radar-bundle.tar.xz; }; then
  failed=$((failed + 1))
  status=1
fi
if [ "$failed" -eq 0 ]; then rm -rf "$scratch"; else echo "the tests' files are kept in $scratch"; fi
echo "$((total - failed)) passed, $failed failed"
exit "$status"
