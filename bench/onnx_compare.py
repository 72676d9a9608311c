#!/usr/bin/env python3
"""Inference side by side, in one run: `radar bench infer` (our eval-mode forward) and ONNX Runtime
on the same model (`radar bench infer --export-onnx` writes it: the same config and seeded
weights), batch and threads, alternated for each (config, threads) so both see the same machine
state; medians over rounds and the ratio ours / ONNX Runtime. Each round also checks that ONNX
Runtime's mean p(fake) on the batch is ours (the same model on the same images).

    python bench/onnx_compare.py --radar .build/release/radar [--configs mid:32,full:8] \
        [--threads 1,2] [--rounds 3] [--repeats 3]

Needs safetensors and onnxruntime (the test venv has both: .build/pyvenv/bin/python). ONNX Runtime runs
with all graph optimisations (its default), intra-op threads as given, one inter-op thread; the
batch is the synthetic faces `radar bench infer` uses, read back from our own run.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import onnxruntime as ort
from safetensors.numpy import load_file

from side_by_side import last_json, print_table


def runtime_images_per_s(path, x, threads, repeats):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    s = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    batch = x.shape[0]
    prob = s.run(["prob"], {"image": x})[0]  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        prob = s.run(["prob"], {"image": x})[0]
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times), float(prob.mean())


def main():
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--radar", default=".build/release/radar")
    a.add_argument("--configs", default="mid:32,full:8", help="config:batch pairs")
    a.add_argument("--threads", default="1,2")
    a.add_argument("--rounds", type=int, default=3)
    a.add_argument("--repeats", type=int, default=3)
    o = a.parse_args()
    rows, machine = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for spec in o.configs.split(","):
            config, batch = spec.split(":")
            model, images = os.path.join(tmp, f"{config}.onnx"), os.path.join(tmp, f"{config}.safetensors")
            for t in [int(x) for x in o.threads.split(",")]:
                ours, theirs = [], []
                for _ in range(o.rounds):
                    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
                    r = subprocess.run([o.radar, "bench", "infer", "--config", config, "--batch", batch, "--threads", str(t),
                                        "--repeats", str(o.repeats), "--export-onnx", model, "--export-batch", images],
                                       capture_output=True, text=True, env=env, check=True)
                    j = last_json(r.stdout)
                    machine = j.get("machine", machine)
                    ours.append(j["images_per_s"])
                    ips, mean = runtime_images_per_s(model, load_file(images)["images"], t, o.repeats)
                    theirs.append(ips)
                    if abs(mean - j["mean_probability"]) > 1e-4:
                        raise SystemExit(f"{config}: ONNX Runtime's mean p(fake) {mean} is not ours {j['mean_probability']}")
                rows.append((config, batch, t, ours, theirs))
                print(f"{config} batch {batch} threads {t}: ours {ours} ONNX Runtime {theirs}", file=sys.stderr)
    print(f"machine: {json.dumps(machine, sort_keys=True)}")
    print(f"ONNX Runtime {ort.__version__}, CPUExecutionProvider")
    print_table(rows, "ours", "ONNX Runtime", "ONNX Runtime")

if __name__ == "__main__":
    main()
