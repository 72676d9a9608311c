"""Registers, spills and shared memory of every kernel of one family, as ptxas reports them, on a
machine without a GPU (NVRTC from the test venv's nvidia-cuda-nvrtc-cu12 wheel):

    .build/pyvenv/bin/python tools/ptxas_report.py attention [sm_90]

Compiles Sources/CCUDAEmulator/kernels/common.h followed by the family's .cuh, as the CUDA
backend's NVRTC programs are made (KernelSources), with ptxas verbose, and prints one line per
kernel. Exit status 1 when NVRTC fails (its log printed).
"""
import ctypes
import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def compile_family(family, arch, cubin=False):
    """NVRTC (this Python's nvidia-cuda-nvrtc-cu12 wheel) on common.h and the family, with ptxas
    verbose: (ptxas's log, the CUBIN or None). Exits naming the problem when it cannot."""
    libs = glob.glob(os.path.join(sys.prefix, "lib", "python3*", "site-packages", "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so.*"))
    if not libs:
        sys.exit("ptxas_report: no libnvrtc in this Python's nvidia-cuda-nvrtc-cu12 wheel (run it with .build/pyvenv/bin/python)")
    nvrtc = ctypes.CDLL(libs[0])
    kernels = os.path.join(ROOT, "Sources", "CCUDAEmulator", "kernels")
    path = os.path.join(kernels, family + ".cuh")
    if not os.path.exists(path):
        sys.exit(f"ptxas_report: {path}: no such kernel family")
    source = open(os.path.join(kernels, "common.h")).read() + "\n" + open(path).read()
    program = ctypes.c_void_p()
    nvrtc.nvrtcCreateProgram(ctypes.byref(program), source.encode(), f"{family}.cu".encode(), 0, None, None)
    options = [f"--gpu-architecture={arch}".encode(), b"-Xptxas", b"-v", b"-std=c++17", b"-default-device"]
    status = nvrtc.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(program, log)
    text = log.value.decode()
    if status != 0:
        print(text)
        sys.exit(1)
    binary = None
    if cubin:
        nvrtc.nvrtcGetCUBINSize(program, ctypes.byref(size))
        buffer = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetCUBIN(program, buffer)
        binary = buffer.raw
    return text, binary


def main():
    family = sys.argv[1] if len(sys.argv) > 1 else "attention"
    arch = sys.argv[2] if len(sys.argv) > 2 else "sm_90"
    text, _ = compile_family(family, arch)
    name = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            name = m.group(1)
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and name:
            spills = f"spills {m.group(1)}/{m.group(2)} B"
        m = re.search(r"Used (\d+) registers", line)
        if m and name:
            smem = re.search(r"(\d+) bytes smem", line)
            print(f"{name}: {m.group(1)} registers, {smem.group(1) if smem else 0} bytes shared, {spills} ({arch})")


if __name__ == "__main__":
    main()
