#!/usr/bin/env python3
"""The training step side by side, in one run: `radar bench step` and bench/pytorch_step.py
(PyTorch eager, same config, batch and threads), alternated for each (config, threads) so both
see the same machine state; medians over rounds and the ratio ours / PyTorch.

    python bench/compare_step.py --radar .build/release/radar --python /path/to/venv/bin/python \
        [--configs mid:32,full:8] [--threads 1,2] [--rounds 2] [--repeats 3] [--precision fp32|bf16]

--precision bf16: ours with `--precision bf16` (oneDNN bf16 products where the CPU has AMX-BF16 or
AVX512-BF16; elsewhere ours falls back to fp32, and the table says so) against PyTorch CPU autocast.

Prints a Markdown table and the machine record of our benchmark (CPU, BLAS kernels).
"""
import argparse
import json
import os
import subprocess
import sys

from side_by_side import last_json, print_table


def main():
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--radar", default=".build/release/radar")
    a.add_argument("--python", default=sys.executable, help="a Python with torch and timm")
    a.add_argument("--configs", default="mid:32,full:8", help="config:batch pairs")
    a.add_argument("--threads", default="1,2")
    a.add_argument("--rounds", type=int, default=2)
    a.add_argument("--repeats", type=int, default=3)
    a.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    o = a.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    rows, machine, ours_precision, ours_device = [], None, set(), None
    for spec in o.configs.split(","):
        config, batch = spec.split(":")
        for t in [int(x) for x in o.threads.split(",")]:
            ours, theirs = [], []
            for _ in range(o.rounds):
                env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
                r = subprocess.run([o.radar, "bench", "step", "--config", config, "--batch", batch, "--threads", str(t),
                                    "--repeats", str(o.repeats), "--precision", o.precision], capture_output=True, text=True, env=env,
                                   check=True)
                j = last_json(r.stdout)
                machine = j.get("machine", machine)
                ours_precision.add(j.get("precision", "fp32"))
                ours_device = j.get("device", ours_device)
                ours.append(j["images_per_s"])
                env = dict(os.environ, OMP_NUM_THREADS=str(t))
                r = subprocess.run([o.python, os.path.join(here, "pytorch_step.py"), "--config", config, "--batch", batch,
                                    "--threads", str(t), "--repeats", str(o.repeats), "--precision", o.precision],
                                   capture_output=True, text=True, env=env, check=True)
                theirs.append(last_json(r.stdout)["images_per_s"])
            rows.append((config, batch, t, ours, theirs))
            print(f"{config} batch {batch} threads {t}: ours {ours} PyTorch {theirs}", file=sys.stderr)
    print(f"machine: {json.dumps(machine, sort_keys=True)}")
    print(f"ours: {ours_device}; precision {', '.join(sorted(ours_precision))}")
    theirs_name = "PyTorch fp32 eager" if o.precision == "fp32" else "PyTorch CPU autocast bf16"
    ours_name = "ours " + "/".join(sorted(ours_precision))
    print_table(rows, ours_name, theirs_name, "PyTorch")

if __name__ == "__main__":
    main()
