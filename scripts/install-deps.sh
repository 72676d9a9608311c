#!/usr/bin/env bash
# Installs exactly the Debian packages RADAR builds and tests against. Idempotent: packages that
# are already installed are not fetched again, and apt-get update runs at most once per call.
# `--list` prints the package list (the one place it is kept).
set -euo pipefail

PACKAGES=(
  pkg-config
  libopenmpi-dev openmpi-bin      # CMPI, mpirun
  libopenblas-dev                 # COpenBLAS (cblas_sgemm)
  liblz4-dev lz4                  # CLZ4 (frame API) and the lz4 CLI for interop checks
  libfftw3-dev                    # CFFTW (single precision, fftw3f)
  libpng-dev libturbojpeg0-dev    # image decoding (data pipeline)
  libwebp-dev                     # CWebP: WebP images (read as Pillow reads them; prepare stores them as PNG)
  libdeflate-dev                  # CLibDeflate: the PNG fast path's inflate and CRC-32
  libarchive-dev                  # tar/gz streaming and zip export
  libssl-dev                      # COpenSSL: SHA-256, HMAC, secure random, frame tags (libcrypto)
  libdnnl-dev                     # oneDNN 2 (COneDNN, loaded at run time): bf16 products on AMX/AVX512-BF16 CPUs
  procps                          # pgrep, used by the multi-process tests
  iproute2                        # ip, tc: simulated hosts for the multi-host test (cluster/netns.sh)
  xz-utils binutils patchelf      # scripts/bundle.sh (xz, strip; patchelf: the glibc stand-ins, tools/glibc_floor.py)
  g++                             # scripts/check-bundle.sh: a C++ program through the bundled libstdc++
  openssl                         # scripts/check-bundle.sh: a test CA for HTTPS where the CA certificates lie elsewhere
)

if [ "${1:-}" = "--list" ]; then
  echo "${PACKAGES[@]}"
  exit 0
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
