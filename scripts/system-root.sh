#!/usr/bin/env bash
# A minimal root file system of another Linux with python3, for `scripts/check-bundle.sh --root DIR`:
# the bundle run on a system it was not built on. Ubuntu suites (default jammy, 22.04: glibc 2.35,
# the base of most CUDA and PyTorch pod images; focal, 20.04: glibc 2.31; bionic, 18.04: 2.27) come
# from archive.ubuntu.com; Debian suites (bullseye, 11: glibc 2.31) from deb.debian.org, checked
# against Debian's keyring. Debian carries no Ubuntu archive key, so Ubuntu's packages are not
# signature-checked: a throwaway test root, not a system to run anything else in. Needs root and
# debootstrap (Debian package); about 40 MB each.
#
#   bash scripts/system-root.sh DIR [SUITE]      (SUITE: jammy, focal, bionic, bullseye, ...; default jammy)
set -euo pipefail
dir=${1:?usage: system-root.sh DIR [SUITE]}
suite=${2:-jammy}
if [ -x "$dir/usr/bin/python3" ] && grep -q "VERSION_CODENAME=$suite" "$dir/etc/os-release" 2>/dev/null; then
  echo "system-root: $dir already holds $suite"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "system-root: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
case "$suite" in
  buster|bullseye|bookworm|trixie) source=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg "$suite") mirror=http://deb.debian.org/debian ;;
  *) source=(--no-check-gpg "$suite") mirror=http://archive.ubuntu.com/ubuntu ;;
esac
partial="$dir.partial"
rm -rf "$partial"
debootstrap --variant=minbase --include=python3 "${source[@]}" "$partial" "$mirror" >"$partial.log" 2>&1 ||
  { tail -5 "$partial.log" >&2; echo "system-root: debootstrap of $suite failed (log: $partial.log)" >&2; exit 1; }
rm -rf "$dir" "$partial.log"
mv "$partial" "$dir"
echo "system-root: $dir: $(. "$dir/etc/os-release" && echo "$PRETTY_NAME"), $(chroot "$dir" getconf GNU_LIBC_VERSION)"
