#!/usr/bin/env bash
# Runs a bundle (scripts/bundle.sh) the way a bare GPU pod would: in a private mount namespace
# where the Swift toolchain, /usr/include, pkg-config's files and this machine's copies of every
# library the bundle carries are out of sight (empty mounts over them), so anything the bundle
# forgot fails to load. Runs: the in-memory demo, a short training run on a synthetic set with two
# TCP ranks (`radar launch`), and the bundle's gpu-check.sh on the emulated CUDA device (probe, every
# kernel, golden parity, bench step in each precision). Hiding needs root (unshare -m); without it
# the same runs happen with the system libraries in sight, and the script says so.
# Then the same programs on the bundle's own glibc, as the launchers run them where the machine's
# is older than the bundle's files need (RADAR_BUNDLE_GLIBC=bundled chooses it here).
# With --root DIR the same runs happen in another system's root file system instead (chroot, with
# /proc and /dev mounted in a private namespace): `bash scripts/system-root.sh DIR [SUITE]` makes
# one: Ubuntu 22.04 (glibc 2.35, the machine's glibc runs the bundle), or 20.04, 18.04 or Debian 11
# (2.31, 2.27, 2.31: the bundle's own glibc runs it). Nothing is hidden there: the root has only its
# own libraries, as a pod has.
#
#   bash scripts/check-bundle.sh [BUNDLE.tar.xz] [--root DIR]    (default .build/radar-bundle.tar.xz)
set -euo pipefail
trap 'echo "check-bundle: failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR
caller=$PWD
cd "$(dirname "$0")/.."
bundle="" root=""
while [ $# -gt 0 ]; do
  case "$1" in
    --root) case "$2" in /*) root=$2 ;; *) root="$caller/$2" ;; esac; root=$(cd "$root" && pwd); shift 2 ;;
    *) bundle=$1; shift ;;
  esac
done
bundle=${bundle:-$PWD/.build/radar-bundle.tar.xz}
case "$bundle" in /*) ;; *) bundle="$caller/$bundle" ;; esac  # a given path is the caller's
if [ -n "$root" ]; then
  test -x "$root/bin/bash" && test -x "$root/usr/bin/python3" || { echo "check-bundle: $root has no /bin/bash or /usr/bin/python3 (scripts/system-root.sh makes one that has)" >&2; exit 1; }
  mkdir -p "$root/tmp"
  work=$(mktemp -d "$root/tmp/check-bundle.XXXXXX")
else
  work=$(mktemp -d)
fi
server=""
trap 'if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
tar -C "$work" -xJf "$bundle"
b="$work/radar-bundle"

# Two programs for the glibc floor's checks, built before the compilers go out of sight: the
# stand-ins' self-test (random bytes; the dl_iterate_phdr search against glibc's own
# _dl_find_object), and a C++ program that throws (libgcc_s's unwinder asks _dl_find_object) and
# draws from std::random_device("arc4random") (libstdc++'s arc4random), run on the bundle's copies.
swift_bin=$(dirname "$(readlink -f "$(command -v swift || echo /opt/swift/usr/bin/swift)")")
cc=$(command -v cc || command -v gcc || echo "$swift_bin/clang")
cxx=$(command -v c++ || command -v g++ || echo "$swift_bin/clang++")
printf 'int rcg_selftest_fallbacks(void);\nint main(void) { return rcg_selftest_fallbacks(); }\n' > "$work/selftest.c"
"$cc" -o "$work/compat-selftest" "$work/selftest.c" -L"$b/lib" -lradar-glibc-compat
cat > "$work/cxx-check.cpp" <<'CXX'
#include <cstdio>
#include <random>
#include <stdexcept>
#include <string>
static int thrower(int x) { if (x > 0) throw std::runtime_error("unwound"); return x; }
int main() {
    bool caught = false;
    try { thrower(1); } catch (const std::exception &e) { caught = std::string(e.what()) == "unwound"; }
    std::random_device rd("arc4random");
    unsigned a = rd(), b = rd(), c = rd();
    bool draws = !(a == b && b == c);
    std::printf("exception %s, random_device %s\n", caught ? "caught" : "LOST", draws ? "draws" : "REPEATS");
    return caught && draws ? 0 : 1;
}
CXX
"$cxx" -O1 -o "$work/cxx-check" "$work/cxx-check.cpp"
cp tools/glibc_floor.py "$work/"
# binutils' readelf, read apart from our tool, agrees: no version need above 2.34 in any file.
readelf_need=$(for f in "$b"/libexec/* "$b"/lib/*; do readelf -V -W "$f"; done | grep -o "Name: GLIBC_2\.[0-9.]*" | sed 's/Name: GLIBC_//' | sort -uV | tail -1)
if [ "$readelf_need" != 2.34 ]; then echo "check-bundle: readelf finds a need for glibc $readelf_need"; exit 1; fi
# A need above the floor with no known older version or stand-in stops the bundle, naming it.
printf '#include <stdlib.h>\nint main(void) { return (int)arc4random_uniform(2); }\n' > "$work/uniform.c"
"$cc" -o "$work/uniform" "$work/uniform.c"
if python3 tools/glibc_floor.py --lower 2.34 "$work/uniform" 2> "$work/uniform.err"; then
  echo "check-bundle: glibc_floor.py lowered arc4random_uniform, which it has no stand-in for"; exit 1
fi
grep -q "needs arc4random_uniform of GLIBC_2.36" "$work/uniform.err" || { cat "$work/uniform.err"; exit 1; }

# An HTTPS server on 127.0.0.1 with a test CA (python's ssl needs this machine's libssl, which the
# namespace below hides: it runs out here), for the CA certificates where other systems keep them.
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$work/ca.key" -out "$work/ca.pem" -days 2 -subj "/CN=radar check-bundle CA" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout "$work/srv.key" -out "$work/srv.csr" -subj "/CN=127.0.0.1" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' > "$work/san.ext"
openssl x509 -req -in "$work/srv.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -out "$work/srv.pem" -days 2 -extfile "$work/san.ext" 2>/dev/null
python3 - "$work" > "$work/https.log" 2>&1 <<'PY' &
import functools, http.server, os, ssl, sys
work = sys.argv[1]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(work + "/srv.pem", work + "/srv.key")
os.makedirs(work + "/www", exist_ok=True)
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=work + "/www"))
s.socket = ctx.wrap_socket(s.socket, server_side=True)
with open(work + "/https.port.tmp", "w") as f:
    f.write(str(s.server_address[1]))
os.rename(work + "/https.port.tmp", work + "/https.port")
s.serve_forever()
PY
server=$!
for _ in $(seq 100); do [ -f "$work/https.port" ] && break; sleep 0.1; done
test -f "$work/https.port" || { cat "$work/https.log"; echo "check-bundle: the test HTTPS server did not start"; exit 1; }

cat > "$work/inside.sh" <<'INSIDE'
set -euo pipefail
b=$1 work=$2
if [ "${IN_ROOT:-0}" = 1 ]; then
  echo "check-bundle: in the root of $(. /etc/os-release && echo "$PRETTY_NAME"), $(getconf GNU_LIBC_VERSION)"
elif [ "${NO_HIDE:-0}" = 1 ]; then
  echo "check-bundle: no mount namespace here (unshare -m needs CAP_SYS_ADMIN): the bundle runs with the system libraries in sight"
else
hide_dir() { if [ -d "$1" ]; then mount -t tmpfs -o size=1m none "$1"; fi; }
swift_root=$(dirname "$(dirname "$(dirname "$(readlink -f "$(command -v swift || echo /opt/swift/usr/bin/swift)")")")")
hide_dir "$swift_root"
hide_dir /usr/include
hide_dir /usr/lib/x86_64-linux-gnu/pkgconfig
hide_dir /usr/share/pkgconfig
hidden=0
for lib in "$b"/lib/*; do
  for d in /usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu /usr/lib /usr/local/lib; do
    f="$d/$(basename "$lib")"
    if [ -e "$f" ]; then mount --bind /dev/null "$(readlink -f "$f")"; hidden=$((hidden + 1)); break; fi
  done
done
echo "check-bundle: hid $swift_root, /usr/include, pkg-config and $hidden system libraries"
if command -v swift >/dev/null && swift --version >/dev/null 2>&1; then echo "check-bundle: swift still runs"; exit 1; fi
fi
export PATH="$b/bin:$PATH"
cd "$(mktemp -d)"
# The glibc floor (scripts/bundle.sh): no file of the bundle needs a glibc newer than the one the
# launchers check for, and the stand-ins for newer functions work, both with glibc's own functions
# behind them and as an older glibc runs them (RADAR_GLIBC_COMPAT_FALLBACK=1). Below the floor
# (an older root) the two test programs, built here, run on the bundle's glibc as the programs do.
floor=$(cat "$b/share/glibc-version")
need=$(python3 "$work/glibc_floor.py" --max "$b"/libexec/* "$b"/lib/* | tail -1)
if [ "$need" != "$floor" ] || [ "$floor" != 2.34 ]; then echo "check-bundle: the files need glibc $need, the launchers check for $floor"; exit 1; fi
system_glibc=$(getconf GNU_LIBC_VERSION | awk '{print $2}')
on_bundle=() BELOW_FLOOR=0
if [ "$(printf '%s\n%s\n' "$floor" "$system_glibc" | sort -V | head -1)" != "$floor" ]; then
  on_bundle=("$b/glibc/lib/ld-linux-x86-64.so.2" --library-path "$b/glibc/lib:$b/lib") BELOW_FLOOR=1
  echo "check-bundle: this system's glibc $system_glibc is older than the bundle's files need ($floor): the programs run on the bundle's own $(cat "$b/share/glibc-bundled")"
fi
export BELOW_FLOOR
LD_LIBRARY_PATH="$b/lib" "${on_bundle[@]}" "$work/compat-selftest"
bound=$(LD_LIBRARY_PATH="$b/lib" LD_DEBUG=bindings "${on_bundle[@]}" "$work/cxx-check" 2>&1 >/dev/null | grep -c "to $b/lib/libradar-glibc-compat.so .*rcg" || true)
if [ "$bound" -lt 2 ]; then echo "check-bundle: the bundle's libstdc++ and libgcc_s did not take the stand-ins ($bound bindings)"; exit 1; fi
LD_LIBRARY_PATH="$b/lib" "${on_bundle[@]}" "$work/cxx-check" >/dev/null
RADAR_GLIBC_COMPAT_FALLBACK=1 LD_LIBRARY_PATH="$b/lib" "${on_bundle[@]}" "$work/cxx-check" >/dev/null
# (No sed in here: its libacl is one of the hidden system copies.)
fallback_demo=$(RADAR_GLIBC_COMPAT_FALLBACK=1 radar demo --epochs 1 2>&1 | tail -1)
echo "check-bundle: the demo with the fallbacks: $fallback_demo"
echo "check-bundle: every file loads on glibc $floor; the stand-ins passed their self-test, and a C++ program threw, caught and drew random numbers through the bundle's libstdc++ and libgcc_s, with glibc's functions and with the fallbacks"
radar demo --epochs 1 2>&1 | tail -2
# Through a symlink, as a folder in PATH may hold it: the launcher finds the bundle behind it.
mkdir -p linked && ln -s "$b/bin/radar" linked/radar
linked/radar check-device --device cuda-emulated --probe-only > linked.json
radar synth --output data --count 96 --size 32 >/dev/null
radar launch -n 2 -- radar-worker --data data --output out --experiment e --config tiny --batch-size 4 --num-epochs 1 \
  --max-steps-per-epoch 2 --threads 1 2>&1 | tail -2
test -f out/e/last.safetensors.lz4
# The GPU check as a pod runs it, on the emulated device (probe, every kernel, golden parity,
# bench step in fp32/tf32/bf16 (fused attention's fast build and cuBLASLt's epilogues, the
# defaults) and bf16 with the products path, the memory variants, the kernel check and bf16 step
# with the attention kernels' plain build, with the bias fills and with the ldmatrix build, the products
# one by one and the bf16 step with the table of algorithms that pins the faster ones).
# (A generous deadline: the emulated device is slow, and a skipped step fails the check.)
# GPU_CHECK_GPUS=2: step 6b as on a machine of two GPUs (two emulated ones: a rank on each, the
# all-reduce bench and the scaling table on 1 and 2 ranks).
GPU_CHECK_DEVICE=cuda-emulated GPU_CHECK_GPUS=2 GPU_CHECK_CONFIG=tiny GPU_CHECK_BATCH=2 GPU_CHECK_REPEATS=1 GPU_CHECK_DEADLINE=1800 GPU_CHECK_SERVE_REQUESTS=48 \
  bash "$b/gpu-check.sh" > report.json 2> report.log || { tail -20 report.log; exit 1; }
python3 - <<'PY' || { echo "check-bundle: the report failed its checks; gpu-check's log:" >&2; tail -20 report.log >&2; exit 1; }
import json, os
r = json.load(open("report.json"))
assert r["passed"] and r["complete"] and r["skipped"] == [], (r["skipped"], r["seconds"])
assert r["system"]["bundle_needs_glibc"] == "2.34" and r["system"]["glibc"].startswith("glibc 2.") and r["system"]["os"], r["system"]
# Which glibc radar ran on: the system's from 2.34, else the bundle's own (the launchers' choice).
ran = r["system"]["radar_runs_on_glibc"]
assert ("the bundle's" in ran) if os.environ["BELOW_FLOOR"] == "1" else ran == r["system"]["glibc"].split()[1], (ran, r["system"])
assert r["check"]["kernels_passed"] == r["check"]["kernels_total"], r["check"]
assert sorted((b["precision"], b["attention"]) for b in r["radar_bench_step"]) == [
    ("bf16", "fused"), ("bf16", "products"), ("fp32", "products"), ("tf32", "products")], r["radar_bench_step"]
v = r["radar_bench_step_variants"]
assert [(b["bf16_activations"], b["recompute_in_backward"], b["gemm_epilogues"], b["gemm_table_entries"]) for b in v[:5]] == [
    (True, True, True, None), (True, True, True, None), (False, True, True, None), (True, False, True, None), (True, True, False, None)], v
# The defaults (fast attention kernels, cuBLASLt's epilogues) in steps 1-4; step 7b the fills.
assert r["check"]["probe"]["attention_kernels"] == "fast" and r["check"]["probe"]["gemm_epilogues"] is True, r["check"]["probe"]
assert r["gemm_fills_check"]["passed"] and r["gemm_fills_check"]["probe"]["gemm_epilogues"] is False, r["gemm_fills_check"]
# Steps 7e and 7d: the attention kernels' plain and ldmatrix builds, each checked and stepped.
assert r["attention_plain_check"]["passed"] and r["attention_plain_check"]["probe"]["attention_kernels"] == "plain", r["attention_plain_check"]
assert r["attention_ldmatrix_check"]["passed"] and r["attention_ldmatrix_check"]["probe"]["attention_kernels"] == "ldmatrix", r["attention_ldmatrix_check"]
assert [b["attention_kernels"] for b in v] == ["plain", "fast", "fast", "fast", "fast", "ldmatrix", "fast"], v
# Step 7f: the staged LayerNorm backward, checked and stepped.
assert r["layernorm_staged_check"]["passed"] and r["layernorm_staged_check"]["probe"]["layernorm_backward"] == "staged", r["layernorm_staged_check"]
assert [b["layernorm_backward"] for b in v] == ["chunk", "staged", "chunk", "chunk", "chunk", "chunk", "chunk"], v
# Step 7c: every product of the bf16 step timed with its offers; the step again with the table.
g = r["gemm_bench"]
assert g["exit"] == 0 and g["radar"]["distinct_products"] > 0 and all(s["candidates"] for s in g["radar"]["shapes"]), g
assert len(v) == 7 and v[6]["gemm_table_entries"] == g["radar"]["pinned_shapes"], v
assert (v[6]["pinned_products_per_step"] > 0) == (g["radar"]["pinned_shapes"] > 0), (v[6], g["radar"]["pinned_shapes"])
assert r["data_parallel"]["passed"], r["data_parallel"]
assert any("staging_download_seconds" in a for a in r["allreduce"]), r["allreduce"]
assert [s["requests"] for s in r["radar_bench_serve"]] == [48], r["radar_bench_serve"]
# Step 6b: a rank on each of the two (emulated) GPUs, identical; the all-reduce and the scaling table.
m = r["several_gpus"]
assert m["passed"] and m["gpus_used"] == ["cuda:0", "cuda:1"] and len(m["hashes"]) == 2, m
assert [a["ranks"] for a in m["allreduce"]] == [2, 2] and all("staging_download_seconds" in a for a in m["allreduce"]), m["allreduce"]
assert [s["ranks"] for s in m["scaling"]] == [1, 2] and all(s["images_per_s"] > 0 for s in m["scaling"]), m["scaling"]
# Step 6c: the same training twice in each precision, the same parameters; the precisions differ.
d = r["run_to_run"]
assert d["passed"] and len(d["bf16"]) == 2 and len(d["fp32"]) == 2 and d["bf16"][0] != d["fp32"][0], d
print("check-bundle: gpu-check on the emulated device: %d/%d kernels, %d golden cases passed (with the fills %d/%d, with ldmatrix %d/%d, with the plain attention kernels %d/%d, with the staged LayerNorm backward %d/%d); 2 ranks on one GPU identical, runs repeated identical in bf16 and fp32, 2 ranks on 2 GPUs identical (scaling efficiency %.2f); bench gemm %d products, %d pinned; bench step %s" % (
    r["check"]["kernels_passed"], r["check"]["kernels_total"], len(r["check"]["golden"]),
    r["gemm_fills_check"]["kernels_passed"], r["gemm_fills_check"]["kernels_total"],
    r["attention_ldmatrix_check"]["kernels_passed"], r["attention_ldmatrix_check"]["kernels_total"],
    r["attention_plain_check"]["kernels_passed"], r["attention_plain_check"]["kernels_total"],
    r["layernorm_staged_check"]["kernels_passed"], r["layernorm_staged_check"]["kernels_total"],
    m["scaling"][1]["scaling_efficiency"], g["radar"]["distinct_products"], g["radar"]["pinned_shapes"],
    ", ".join("%s %s %.2f img/s" % (b["precision"], b["attention"], b["images_per_s"]) for b in r["radar_bench_step"])))
PY
# Past its deadline the check skips what is left, says so, and still writes a complete report.
if GPU_CHECK_DEVICE=cuda-emulated GPU_CHECK_CONFIG=tiny GPU_CHECK_DEADLINE=1 GPU_CHECK_REPORT=late.json \
    bash "$b/gpu-check.sh" > /dev/null 2> late.log; then echo "check-bundle: gpu-check passed past its deadline"; exit 1; fi
python3 - <<'PY' || { tail -20 late.log >&2; exit 1; }
import json
r = json.load(open("late.json"))
assert r["complete"] and not r["passed"], r
assert len(r["skipped"]) == 7 and r["skipped"][0] == "radar bench step fp32" and "run to run" in r["skipped"], r["skipped"]
assert "radar bench step bf16 products attention" in r["skipped"], r["skipped"]
print("check-bundle: gpu-check past its deadline skipped %s" % ", ".join(r["skipped"]))
PY
# The bundle's own glibc, which the launchers choose where the machine's is older than the files
# need (or absent), chosen here by RADAR_BUNDLE_GLIBC=bundled: the programs run on its libc and
# name themselves after the program, not the loader; what they start gets the environment they
# were given (no LD_LIBRARY_PATH or LOCPATH of the bundle's); the re-execution for better BLAS
# kernels goes through the launcher (a CPU whose flags say AVX-512, RADAR_TEST_CPUINFO: only the
# data bench runs, no product); the programs read the bundle's C.utf8 with the machine's locales
# out of sight (in a root: another glibc's); the device check and two TCP ranks' training pass.
(
export RADAR_BUNDLE_GLIBC=bundled
unset LD_LIBRARY_PATH LOCPATH
if [ "${NO_HIDE:-0}" != 1 ] && [ -d /usr/lib/locale ]; then mount -t tmpfs -o size=1m none /usr/lib/locale; fi
radar check-device --device cuda-emulated > bundled-check.json 2> bundled-check.log || { tail -5 bundled-check.log; exit 1; }
linked/radar check-device --device cuda-emulated --probe-only > linked-bundled.json
child=$(radar launch -n 1 -- sh -c 'echo "$(cat /proc/$PPID/comm) ${LD_LIBRARY_PATH-unset} ${LOCPATH-unset}"' 2>/dev/null | tail -1)
if [ "$child" != "radar unset unset" ]; then echo "check-bundle: on the bundle's glibc, a program radar started saw '$child' (expected 'radar unset unset': radar's name, no LD_LIBRARY_PATH, no LOCPATH)"; exit 1; fi
python3 -c "
import re, sys
t = open('/proc/cpuinfo').read()
sys.stdout.write(re.sub(r'(?m)^(flags\s*:.*)$', r'\1 avx512f avx512bw avx512dq avx512vl avx512cd avx512_bf16', t))" > cpuinfo-avx512
RADAR_TEST_CPUINFO=$PWD/cpuinfo-avx512 radar bench data --images 1 --prepare-images 0 > reexec.jsonl
radar synth --output data-b --count 96 --size 32 >/dev/null
radar launch -n 2 -- radar-worker --data data-b --output out-b --experiment e --config tiny --batch-size 4 --num-epochs 1 \
  --max-steps-per-epoch 2 --threads 1 > launch-b.log 2>&1 || { tail -5 launch-b.log; exit 1; }
test -f out-b/e/last.safetensors.lz4
python3 - "$b" <<'PY'
import json, sys
b = sys.argv[1]
r = json.load(open("bundled-check.json"))
p = r["probe"]
assert r["passed"] and r["kernels_passed"] == r["kernels_total"], (r["kernels_passed"], r["kernels_total"])
want = "%s (the bundle's, through %s/glibc/lib/ld-linux-x86-64.so.2)" % (open(b + "/share/glibc-bundled").read().strip(), b)
assert p["glibc"] == want, (p["glibc"], want)
assert p["ctype_locale"] == "C.utf8", p["ctype_locale"]
assert json.load(open("linked-bundled.json"))["probe"]["glibc"] == want
first = json.loads(open("reexec.jsonl").readline())
assert "(switched " in first["machine"]["blas_kernels"], first["machine"]
print("check-bundle: on the bundle's glibc %s: %d/%d kernels and %d golden cases, LC_CTYPE %s from the bundle, children named radar with no LD_LIBRARY_PATH or LOCPATH, the BLAS re-execution (%s), two TCP ranks trained" % (
    p["glibc"].split()[0], r["kernels_passed"], r["kernels_total"], len(r["golden"]), p["ctype_locale"], first["machine"]["blas_kernels"]))
PY
)
# HTTPS where the CA certificates are not where Debian keeps them (RHEL, SUSE, Alpine): the
# bundle's libcurl asks for /etc/ssl/certs/ca-certificates.crt, and tools/ca_bundle.c gives it
# CURL_CA_BUNDLE, REQUESTS_CA_BUNDLE or SSL_CERT_FILE, or the first of the other systems' files that exists. A Hub request to the test
# server (its CA only in those places) reaches it: "HTTP 404", not a certificate error. Without
# the CA anywhere, the certificate error (the server is verified: this check can fail).
https="https://127.0.0.1:$(cat "$work/https.port")"
hub() { env -u CURL_CA_BUNDLE -u REQUESTS_CA_BUNDLE -u SSL_CERT_FILE "$@" radar prepare --source hf --endpoint "$https" --output "hub-$RANDOM" 2>&1 || true; }
if [ "${NO_HIDE:-0}" != 1 ]; then
  mkdir -p /etc/ssl && mount -t tmpfs -o size=1m none /etc/ssl
  nowhere=$(hub)
  # Said once (not retried) with the bundle's remedy (SSL_CERT_FILE works only in the bundle).
  case "$nowhere" in *"certificate file: /etc/ssl/certs/ca-certificates.crt (no CA certificates there: install the system's (Debian: ca-certificates) or set SSL_CERT_FILE"*) ;; *) echo "check-bundle: with no CA certificates, the Hub request gave: $nowhere"; exit 1 ;; esac
  case "$nowhere" in *"gave up"*) echo "check-bundle: a missing CA file was retried: $nowhere"; exit 1 ;; esac
  cat "$work/ca.pem" > /etc/ssl/cert.pem  # (not cp: its libacl is a hidden system copy)
  alpine=$(hub)
  case "$alpine" in *"HTTP 404"*) ;; *) echo "check-bundle: with the CA in /etc/ssl/cert.pem (Alpine's place), the Hub request gave: $alpine"; exit 1 ;; esac
  rm /etc/ssl/cert.pem
fi
for var in SSL_CERT_FILE REQUESTS_CA_BUNDLE; do
  named=$(hub "$var=$work/ca.pem")
  case "$named" in *"HTTP 404"*) ;; *) echo "check-bundle: with $var, the Hub request gave: $named"; exit 1 ;; esac
done
if [ "${NO_HIDE:-0}" != 1 ]; then
  echo "check-bundle: HTTPS with the CA certificates elsewhere: SSL_CERT_FILE, REQUESTS_CA_BUNDLE and another system's place (/etc/ssl/cert.pem) reach the server, none gives the certificate error"
else
  echo "check-bundle: HTTPS with SSL_CERT_FILE and REQUESTS_CA_BUNDLE reaches the server (without a mount namespace, the other systems' places are not tried)"
fi
echo "check-bundle: passed"
INSIDE
if [ -n "$root" ]; then
  # Paths as the root sees them; /proc and /dev (shared memory for the TCP ranks) mounted in a
  # private namespace, so they go when it ends.
  unshare -m bash -c 'mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" && IN_ROOT=1 chroot "$1" /bin/bash "$2/inside.sh" "$3" "$2"' \
    _ "$root" "${work#"$root"}" "${b#"$root"}"
elif unshare -m true 2>/dev/null; then
  unshare -m bash "$work/inside.sh" "$b" "$work"
else
  NO_HIDE=1 bash "$work/inside.sh" "$b" "$work"
fi
