"""Ours against the reference's data path, side by side in one run on the same images, one thread:
`radar bench data --data DIR` and bench/data_reference.py, alternated `--rounds` times; prints the
median of each figure and ours / reference (images/s: above 1 is faster; ms: below 1 is faster).

    python bench/compare_data.py --radar .build/release/radar --data DIR [--rounds 3]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys


def run(cmd):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def figures(records):
    f = {}
    for r in records:
        if r["bench"].startswith("decode"):
            f[f"{r['format']}{' + augment' if r['augment'] else ''} (img/s)"] = r["images_per_s_per_thread"]
        else:
            for k, v in r["ops"].items():
                f[f"{k} (ms)"] = v
    return f


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--radar", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    ours, ref = {}, {}
    machine = None
    for _ in range(a.rounds):
        rec = run([a.radar, "bench", "data", "--data", a.data, "--prepare-images", "0"])
        machine = rec[0]["machine"]
        for k, v in figures(rec).items():
            ours.setdefault(k, []).append(v)
        for k, v in figures(run([sys.executable, os.path.join(os.path.dirname(__file__), "data_reference.py"), "--data", a.data])).items():
            ref.setdefault(k, []).append(v)
    print(json.dumps({"machine": machine, "rounds": a.rounds}))
    print(f"{'figure':32} {'ours':>10} {'reference':>10} {'ours/ref':>9}")
    for k in ours:
        o, r = statistics.median(ours[k]), statistics.median(ref.get(k, [float("nan")]))
        print(f"{k:32} {o:10.3f} {r:10.3f} {o / r:9.2f}")


if __name__ == "__main__":
    main()
