#!/usr/bin/env bash
# A self-contained tarball for bare GPU pods (no Swift, no -dev packages): the release binaries
# built with the static Swift standard library and Foundation, the shared libraries they need from
# this machine (OpenBLAS, FFTW, LZ4, libpng, TurboJPEG, libwebp, libarchive, OpenMPI's libraries, curl and
# their dependencies), this machine's glibc for machines whose own is older than the bundle's files
# need (below), launchers that set the library path, the golden fixtures and scripts the GPU check
# uses. CUDA is not bundled: it is loaded at run time from the pod's driver
# and its pip wheels or toolkit (RADAR_CUDA_LIBS).
#
#   bash scripts/bundle.sh [OUTPUT.tar.xz]      (default .build/radar-bundle.tar.xz)
#
# On the pod:  tar xf radar-bundle.tar.xz && radar-bundle/bin/radar check-device
# mpirun needs a matching OpenMPI on the pod; `radar launch` (TCP ranks) needs nothing.
set -euo pipefail
trap 'echo "bundle: failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR
caller=$PWD
cd "$(dirname "$0")/.."
root=$PWD
out=${1:-$root/.build/radar-bundle.tar.xz}
case "$out" in /*) ;; *) out="$caller/$out" ;; esac  # a given path is the caller's

bash scripts/install-deps.sh >/dev/null

# Static Foundation asks the linker for -lcurl; Debian ships only libcurl.so.4 without -dev.
mkdir -p .build/bundle-link
ln -sf /usr/lib/x86_64-linux-gnu/libcurl.so.4 .build/bundle-link/libcurl.so
echo "bundle: building release binaries with the static Swift standard library"
swift build -c release --static-swift-stdlib -Xlinker -L"$root/.build/bundle-link" 2>&1 | grep -E "error|warning: .*unreachable|Compiling|Build complete" | tail -3
bin=$(swift build -c release --static-swift-stdlib --show-bin-path)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
b="$stage/radar-bundle"
mkdir -p "$b/bin" "$b/libexec" "$b/lib" "$b/share/fixtures" "$b/share/bench" "$b/share/golden"
programs=(radar radar-worker radar-coordinator)
for p in "${programs[@]}"; do
  cp "$bin/$p" "$b/libexec/$p"
  strip "$b/libexec/$p"
done

# Shared libraries: everything ldd resolves except glibc itself (the pod's loader and libc run
# the binaries; the bundle records the oldest glibc its files can load on and the launcher checks it).
glibc='^(linux-vdso|ld-linux|libc\.so|libm\.so|libpthread\.so|libdl\.so|librt\.so|libresolv\.so|libutil\.so)'
for p in "${programs[@]}"; do ldd "$b/libexec/$p"; done | awk '/=> \//{print $1, $3}' | sort -u | while read -r name path; do
  if [[ ! $name =~ $glibc ]]; then cp -L "$path" "$b/lib/$name"; fi
done
# OpenBLAS loads its kernels from the library itself; nothing else is dlopen'ed at run time except
# CUDA (not bundled) and, under mpirun, OpenMPI's plugins (the pod's own OpenMPI).

# The oldest glibc the bundle runs on as the machine's. Built here (Debian 12, glibc 2.36), its files need glibc 2.34
# (pthread and dl* moved into libc then) except for a few newer functions: hypot/hypotf (2.35
# versions; bound to their older ones), arc4random/arc4random_buf (2.36: libstdc++, libarchive,
# libevent) and _dl_find_object (2.35: libgcc_s), whose references tools/glibc_floor.py renames to
# the stand-ins of tools/glibc_compat.c (the running glibc's own function where it has one). So the
# bundle runs on the machine's glibc where it is 2.34+ (Ubuntu 22.04, RHEL 9 and newer), not only 2.36.
floor=2.34
cc=$(command -v cc || command -v gcc || command -v clang || echo "$(dirname "$(readlink -f "$(command -v swift)")")/clang")
# The CA certificates where the pod keeps them (tools/ca_bundle.c: Debian's libcurl looks only in
# Debian's place): a library ahead of libcrypto in the programs' lookup order.
"$cc" -O2 -shared -fPIC -Wl,-soname,libradar-ca-bundle.so -o "$b/lib/libradar-ca-bundle.so" tools/ca_bundle.c
for p in "${programs[@]}"; do patchelf --add-needed libradar-ca-bundle.so "$b/libexec/$p"; done
"$cc" -O2 -shared -fPIC -Wl,-soname,libradar-glibc-compat.so -o "$b/lib/libradar-glibc-compat.so" tools/glibc_compat.c
python3 tools/glibc_floor.py --lower "$floor" "$b"/libexec/* "$b"/lib/* | while read -r file _; do
  patchelf --add-needed libradar-glibc-compat.so "${file%:}"
done
python3 tools/glibc_floor.py --max "$b"/libexec/* "$b"/lib/* | tail -1 > "$b/share/glibc-version"
test "$(cat "$b/share/glibc-version")" = "$floor"

# Below the floor, the bundle's own glibc: this machine's (Debian 12's 2.36) loader, libc and the
# other libraries of its libc6 package, and its C.utf8 locale. Where a machine's glibc is older than
# the floor (Ubuntu 20.04's 2.31, RHEL 8's 2.28) or there is none, the launchers run the programs
# through this loader (`ld-linux-x86-64.so.2 --library-path ... --argv0 ... PROGRAM`): the library
# path is then the loader's option, not LD_LIBRARY_PATH, so what the programs start (ssh, python,
# the launchers of the other programs) keeps the machine's own glibc. Libraries the machine gives
# the programs at run time (the driver's libcuda, NSS modules such as sssd's) were built for an
# older glibc, which a newer one runs. The programs then re-execute through the launcher, not
# /proc/self/exe (the loader), and read the bundle's locale, not the machine's (another glibc's
# format): ProgramImage, ArchiveNames.
mkdir -p "$b/glibc/lib" "$b/glibc/locale"
for f in ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libmvec.so.1 libpthread.so.0 libdl.so.2 librt.so.1 libresolv.so.2 \
         libutil.so.1 libanl.so.1 libnss_files.so.2 libnss_dns.so.2 libnss_compat.so.2; do
  cp -L "/lib/x86_64-linux-gnu/$f" "$b/glibc/lib/$f"
done
cp -r /usr/lib/locale/C.utf8 "$b/glibc/locale/"
getconf GNU_LIBC_VERSION | awk '{print $2}' > "$b/share/glibc-bundled"

for p in "${programs[@]}"; do
  cat > "$b/bin/$p" <<EOF
#!/bin/sh
# Launcher: the bundle's libraries first, then the program. Where this machine's glibc is older
# than the bundle's files need (share/glibc-version), or there is none, the program runs on the
# bundle's own glibc (share/glibc-bundled) through its loader, whose library path is an option,
# not LD_LIBRARY_PATH: what the program starts keeps this machine's libraries.
# RADAR_BUNDLE_GLIBC=bundled takes the bundle's anywhere; =system refuses it.
self=\$(readlink -f "\$0" 2>/dev/null) || self=\$0  # a symlink to it (in a PATH folder) is followed
here=\$(cd "\$(dirname "\$self")/.." && pwd)
need=\$(cat "\$here/share/glibc-version")
have=\$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print \$2}')
use=\${RADAR_BUNDLE_GLIBC:-auto}
case "\$use" in
  auto|system)
    if [ -n "\$have" ] && [ "\$(printf '%s\n%s\n' "\$need" "\$have" | sort -V | head -1)" = "\$need" ]; then
      use=system
    elif [ "\$use" = system ]; then
      echo "$p: this bundle's files need glibc \$need or newer; this machine has \${have:-none} (RADAR_BUNDLE_GLIBC=system)" >&2
      exit 1
    else
      use=bundled
    fi ;;
  bundled) ;;
  *) echo "$p: RADAR_BUNDLE_GLIBC is '\$use'; expected auto, bundled or system" >&2; exit 2 ;;
esac
if [ "\$use" = bundled ]; then
  export RADAR_BUNDLE_LOCALES="\$here/glibc/locale"
  exec "\$here/glibc/lib/ld-linux-x86-64.so.2" --library-path "\$here/glibc/lib:\$here/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" \\
    --argv0 "\$here/bin/$p" "\$here/libexec/$p" "\$@"
fi
export LD_LIBRARY_PATH="\$here/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "\$here/libexec/$p" "\$@"
EOF
  chmod +x "$b/bin/$p"
done

cp -r Tests/RadarCoreTests/Fixtures/parity "$b/share/fixtures/"
cp bench/pytorch_step.py bench/pytorch_gemm.py "$b/share/bench/"
cp tools/golden/radar_reference.py "$b/share/golden/"
cp scripts/gpu-check.sh "$b/gpu-check.sh"
mkdir -p "$b/cluster"
cp cluster/scaling.sh "$b/cluster/"  # gpu-check's step 6b on a machine of several GPUs
git rev-parse HEAD > "$b/share/commit" 2>/dev/null || echo unknown > "$b/share/commit"

echo "bundle: compressing"
mkdir -p "$(dirname "$out")"
# The three programs share most of their bytes (static Foundation): a dictionary larger than one
# binary lets xz store them once.
tar -C "$stage" -cf - radar-bundle | xz -T1 --lzma2=preset=6,dict=192MiB > "$out.tmp"
mv "$out.tmp" "$out"
echo "bundle: $out ($(du -h "$out" | cut -f1); $(ls "$b/lib" | wc -l) shared libraries; the machine's glibc >= $(cat "$b/share/glibc-version"), else its own $(cat "$b/share/glibc-bundled"))"
