#!/usr/bin/env bash
# A minimal Ubuntu root file system (default 22.04, "jammy": glibc 2.35, the base of most CUDA and
# PyTorch pod images) with python3, for `scripts/check-bundle.sh --root DIR`: the bundle run on a
# system it was not built on. Needs root and debootstrap (Debian package), and archive.ubuntu.com
# (about 40 MB). Debian carries no Ubuntu archive key, so the packages are not signature-checked:
# a throwaway test root, not a system to run anything else in.
#
#   bash scripts/ubuntu-root.sh DIR [SUITE]      (SUITE: jammy, noble, ...; default jammy)
set -euo pipefail
dir=${1:?usage: ubuntu-root.sh DIR [SUITE]}
suite=${2:-jammy}
if [ -x "$dir/usr/bin/python3" ] && grep -q "VERSION_CODENAME=$suite" "$dir/etc/os-release" 2>/dev/null; then
  echo "ubuntu-root: $dir already holds $suite"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "ubuntu-root: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
partial="$dir.partial"
rm -rf "$partial"
debootstrap --variant=minbase --include=python3 --no-check-gpg "$suite" "$partial" http://archive.ubuntu.com/ubuntu >"$partial.log" 2>&1 ||
  { tail -5 "$partial.log" >&2; echo "ubuntu-root: debootstrap of $suite failed (log: $partial.log)" >&2; exit 1; }
rm -rf "$dir" "$partial.log"
mv "$partial" "$dir"
echo "ubuntu-root: $dir: $(. "$dir/etc/os-release" && echo "$PRETTY_NAME"), $(chroot "$dir" getconf GNU_LIBC_VERSION)"
