#!/usr/bin/env python3
"""Wall time of a full RADAR run on N GPUs, projected from measured inputs (no GPU needed to run).

Model of one optimizer step on each of N ranks (one GPU each, one per pod, a ring across pods):
  compute  = batch x accumulation / single-GPU images/s
  comm     = 2 (N-1)/N x gradient bytes x wire factor / (link rate x link efficiency)  (ring all-reduce)
  hidden   = up to the backward of the last micro-batch (backward ~ 2/3 of a micro-batch's compute)
  step     = compute + max(0, comm - hidden)
  run      = epochs x images / (N x batch x accumulation) steps
Inputs are stated on the command line and printed with the table; nothing else is assumed.

  python3 cluster/projection.py --images-per-s 509,744 --gradient-mb 89.9 --link-gbit 10 \
      --link-efficiency 0.86 [--gpus 1,2,4,8] [--epochs 30] [--images 1160000] [--batch 32]
      [--accumulation 2] [--backward-share 0.667]
"""
import argparse


def main():
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--images-per-s", required=True, help="single-GPU training images/s (comma separated: a range)")
    a.add_argument("--gradient-mb", type=float, required=True, help="fp32 gradient bytes per step, MB (radar-worker logs its buckets)")
    a.add_argument("--link-gbit", type=float, required=True, help="pod-to-pod link rate, Gbit/s")
    a.add_argument("--link-efficiency", type=float, required=True, help="measured ring bus bandwidth / link rate")
    a.add_argument("--gpus", default="1,2,4,8")
    a.add_argument("--epochs", type=int, default=30)
    a.add_argument("--images", type=int, default=1_160_000)
    a.add_argument("--batch", type=int, default=32)
    a.add_argument("--accumulation", type=int, default=2)
    a.add_argument("--backward-share", type=float, default=2 / 3, help="backward's share of a micro-batch's compute")
    o = a.parse_args()
    rates = [float(x) for x in o.images_per_s.split(",")]
    gpus = [int(x) for x in o.gpus.split(",")]
    bw = o.link_gbit * 1e9 / 8 * o.link_efficiency
    per_step_images = o.batch * o.accumulation
    print(f"inputs: single GPU {', '.join('%g' % r for r in rates)} images/s; gradients {o.gradient_mb} MB fp32; link {o.link_gbit:g} Gbit/s "
          f"at {o.link_efficiency:.0%} efficiency; {o.epochs} epochs x {o.images:,} images; batch {o.batch} x {o.accumulation} accumulation per GPU")
    print("| GPUs | " + " | ".join(f"{r:g} img/s/GPU, fp32 wire | {r:g} img/s/GPU, bf16 wire" for r in rates) + " |")
    print("|---|" + "---|---|" * len(rates))
    for n in gpus:
        cells = []
        for r in rates:
            compute = per_step_images / r
            hidden = compute / o.accumulation * o.backward_share
            steps = o.epochs * o.images / (n * per_step_images)
            for wire in (1.0, 0.5):
                comm = 0 if n == 1 else 2 * (n - 1) / n * o.gradient_mb * 1e6 * wire / bw
                step = compute + max(0.0, comm - hidden)
                cells.append(f"{steps * step / 3600:.1f} h (step {step * 1000:.0f} ms, comm {comm * 1000:.0f})")
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
