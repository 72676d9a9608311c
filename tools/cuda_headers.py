#!/usr/bin/env python3
"""CUDA 12 and CUDA 13 headers (and NVRTC 13's library) for the ABI and compile gates.

The CUDA backend declares every driver, NVRTC, cuBLAS and cuFFT function it loads with dlopen;
CUDAABIGateTests compiles NVIDIA's own headers of both majors and compares. The headers ship in
NVIDIA's pip wheels; this downloads the pinned wheels (no dependencies, pip's cache), keeps only
`include/` (and NVRTC 13's shared libraries, for the compile gate with NVRTC 13), and deletes the
wheels: about 1.5 GB downloaded, about 120 MB kept.

    python3 tools/cuda_headers.py DEST      -> DEST/cu12/{include,lib}, DEST/cu13/{include,lib}

Nothing is done when DEST already holds what the pins name (DEST/cuXX/PINS).
"""
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

# CUDA 12.9 (the runtime and NVRTC wheels scripts/test.sh installs) and CUDA 13.0 (what a pod with
# driver 580 and PyTorch's cu130 wheels runs). crt/host_defines.h, which the runtime headers
# include, comes with nvcc's wheel in CUDA 12 and its own in CUDA 13; nv/target (cuda_fp16.h, which
# cublas_api.h includes) with CCCL.
PINS = {
    "cu12": ["nvidia-cuda-runtime-cu12==12.9.79", "nvidia-cuda-nvcc-cu12==12.9.86", "nvidia-cuda-cccl-cu12==12.9.27",
             "nvidia-cuda-nvrtc-cu12==12.9.86",
             "nvidia-cublas-cu12==12.9.1.4", "nvidia-cufft-cu12==11.4.1.4"],
    "cu13": ["nvidia-cuda-runtime==13.0.96", "nvidia-cuda-crt==13.0.88", "nvidia-cuda-cccl==13.0.85",
             "nvidia-cuda-nvrtc==13.0.88",
             "nvidia-cublas==13.0.2.14", "nvidia-cufft==12.0.0.61"],
}


def wanted(member, major):
    """include/** of any wheel; for CUDA 13, NVRTC's libraries (libnvrtc.so.13, its builtins):
    CUDA 12's NVRTC is already in the test virtualenv."""
    parts = member.split("/")
    if "include" in parts[:-1] and not member.endswith("/"):
        return ("include", "/".join(parts[parts.index("include") + 1:]))
    if major == "cu13" and "lib" in parts[:-1] and parts[-1].startswith("libnvrtc") and ".so" in parts[-1] and "alt" not in parts[-1]:
        return ("lib", parts[-1])
    return None


def fetch(major, pins, dest):
    folder = os.path.join(dest, major)
    stamp = os.path.join(folder, "PINS")
    text = "\n".join(pins) + "\n"
    if os.path.exists(stamp) and open(stamp).read() == text:
        return
    shutil.rmtree(folder, ignore_errors=True)
    staging = folder + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    with tempfile.TemporaryDirectory() as wheels:
        for pin in pins:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                            "--no-deps", "--only-binary=:all:", "-d", wheels, pin], check=True)
        for name in sorted(os.listdir(wheels)):
            with zipfile.ZipFile(os.path.join(wheels, name)) as z:
                for info in z.infolist():
                    where = wanted(info.filename, major)
                    if where is None:
                        continue
                    target = os.path.join(staging, *where)
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    with z.open(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out)
    with open(os.path.join(staging, "PINS"), "w") as f:
        f.write(text)
    os.rename(staging, folder)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: cuda_headers.py DEST")
    dest = sys.argv[1]
    os.makedirs(dest, exist_ok=True)
    for major, pins in PINS.items():
        fetch(major, pins, dest)
        print(f"cuda_headers: {major}: {os.path.join(dest, major)} ({', '.join(pins)})")


if __name__ == "__main__":
    main()
