#!/usr/bin/env bash
# Installs the system packages if missing, prepares a small Python environment for the file-format
# interop tests (numpy, safetensors, lz4 from PyPI), builds, and runs every test (unit, gradient
# checks, PyTorch fixtures, data pipeline, checkpoints, multi-process MPI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
venv=.build/pyvenv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import numpy, safetensors, lz4" 2>/dev/null; then
  if python3 -m venv "$venv" 2>/dev/null; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check numpy safetensors lz4
  else
    # No venv module (Debian's python3 without python3-venv): install for the user instead.
    python3 -m pip install --quiet --user numpy safetensors lz4 2>/dev/null \
      || python3 -m pip install --quiet --user --break-system-packages numpy safetensors lz4
    venv=""
  fi
fi
if [ -n "$venv" ]; then export RADAR_PYTHON="$PWD/$venv/bin/python"; else export RADAR_PYTHON=python3; fi
export OPENBLAS_NUM_THREADS=1
swift build --build-tests
log=$(mktemp)
set +e
swift test 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One plain closing line with XCTest's totals (swift test ends with Swift Testing's own summary,
# which counts only swift-testing tests: none here).
summary=$(grep -E "Executed [0-9]+ tests?, with [0-9]+ failures?" "$log" | tail -n 1)
rm -f "$log"
if [ -n "$summary" ]; then
  total=$(echo "$summary" | sed -E 's/.*Executed ([0-9]+) tests?.*/\1/')
  failed=$(echo "$summary" | sed -E 's/.*with ([0-9]+) failures?.*/\1/')
  echo "$((total - failed)) passed, $failed failed"
fi
exit "$status"
