"""What ptxas made of one kernel family, instruction by instruction, on a machine without a GPU:
compiles Sources/CCUDAEmulator/kernels/common.h followed by the family's .cuh to CUBIN with NVRTC
(as the CUDA backend's programs are made), disassembles it with cuobjdump, and prints per kernel
the registers, the SASS instruction count, and the same for its main loop (the backward branch
whose range holds the most HMMA instructions: for the attention kernels, one 64-row step of the
other side, which runs ceil(N / 64) times a block), with the commonest opcodes.

    .build/pyvenv/bin/python tools/sass_report.py attention [sm_90] [NAME_FILTER] --cuobjdump PATH

cuobjdump is not in the test venv: `python3 -m venv /tmp/sass && /tmp/sass/bin/pip install
nvidia-cuda-cuobjdump` gives one (nvidia/cu13/bin/cuobjdump; it reads CUDA 12.9's sm_80-sm_120
CUBINs). A static count, not a timing: what a step issues when every branch of it is taken.
"""
import argparse
import collections
import os
import re
import subprocess

from ptxas_report import compile_family


def cubin(family, arch):
    """The family's CUBIN and each kernel's registers, as ptxas reported them."""
    log, binary = compile_family(family, arch, cubin=True)
    registers, name = {}, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        name = m.group(1) if m else name
        m = re.search(r"Used (\d+) registers", line)
        if m and name:
            registers[name] = int(m.group(1))
    return binary, registers


def functions(sass):
    """{kernel: [(address, instruction text)]} from cuobjdump -sass."""
    out, current = {}, None
    for line in sass.splitlines():
        m = re.search(r"Function : (\w+)", line)
        if m:
            current = out.setdefault(m.group(1), [])
            continue
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m and current is not None:
            current.append((int(m.group(1), 16), m.group(2)))
    return out


def opcode(text):
    return re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0]


def main_loop(instructions):
    """The instructions of the backward branch's range holding the most HMMAs (ties: the shortest)."""
    best = None
    for address, text in instructions:
        m = re.search(r"BRA\s.*?(0x[0-9a-f]+)", text)
        if not m or int(m.group(1), 16) >= address:
            continue
        start = int(m.group(1), 16)
        body = [t for a, t in instructions if start <= a <= address]
        key = (sum(opcode(t) == "HMMA" for t in body), -len(body))
        if best is None or key > best[0]:
            best = (key, body)
    return best[1] if best else []


def summary(body):
    counts = collections.Counter(opcode(t) for t in body)
    hmma = counts["HMMA"]
    top = ", ".join(f"{k} {v}" for k, v in counts.most_common(8))
    return f"{len(body)} instructions, {hmma} HMMA" + (f" ({len(body) / hmma:.1f} per HMMA)" if hmma else "") + f"; {top}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("family", nargs="?", default="attention")
    parser.add_argument("arch", nargs="?", default="sm_90")
    parser.add_argument("filter", nargs="?", default="")
    parser.add_argument("--cuobjdump", required=True)
    a = parser.parse_args()
    binary, registers = cubin(a.family, a.arch)
    path = f"/tmp/sass_report_{os.getpid()}.cubin"
    with open(path, "wb") as f:
        f.write(binary)
    try:
        sass = subprocess.run([a.cuobjdump, "-sass", path], capture_output=True, text=True, check=True).stdout
    finally:
        os.remove(path)
    for name, instructions in sorted(functions(sass).items()):
        if a.filter in name:
            print(f"{name} ({a.arch}, {registers.get(name)} registers): {summary([t for _, t in instructions])}")
            loop = main_loop(instructions)
            if loop:
                print(f"    main loop: {summary(loop)}")


if __name__ == "__main__":
    main()
