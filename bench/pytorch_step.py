"""PyTorch eager on the same step as `radar bench step`: forward, the 5-term loss, backward,
clip 1.0 and AdamW, for a RADAR config at a given batch and thread count. Prints one JSON object.

    python bench/pytorch_step.py --config mid --batch 32 --threads 1
    python bench/pytorch_step.py --config full --batch 128 --device cuda --precision bf16

--precision fp32 (eager fp32; TF32 off on CUDA), tf32 (CUDA: TF32 matmuls and convolutions) or bf16
(torch.autocast bf16 over the forward: the reference's AMP on CUDA, CPU autocast on the CPU). On
CUDA, times are taken after torch.cuda.synchronize and the peak device memory is
torch.cuda.max_memory_allocated. saved_mib_per_image: the activations autograd keeps for backward
(distinct storages, parameters excluded), per image.

Uses tools/golden/radar_reference.py (torch and timm from PyPI).
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools", "golden"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "golden"))  # in the bundle: share/golden
from radar_reference import RADAR, full_config, radar_loss  # noqa: E402

PRESETS = {
    "tiny": dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, evidence_dim=16, fft_size=16),
    "mid": dict(img_size=64, patch_size=8, embed_dim=192, depth=6, num_heads=3, fft_size=32),
    "full": dict(),
}
BATCH = {"tiny": 8, "mid": 32, "full": 8}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="mid", help="preset name or JSON file")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cuda = a.device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = a.precision == "tf32"
        torch.backends.cudnn.allow_tf32 = a.precision == "tf32"
    elif a.precision == "tf32":
        sys.exit("--precision tf32 needs --device cuda")
    cfg = PRESETS[a.config] if a.config in PRESETS else json.load(open(a.config))
    c = full_config(cfg)
    b = a.batch or BATCH.get(a.config, 8)
    model = RADAR(cfg).train().to(a.device)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
    x = torch.randn(b, 3, c["img_size"], c["img_size"], device=a.device)
    y = torch.tensor([i % 2 for i in range(b)], dtype=torch.float32, device=a.device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            out = model(x)
        loss = radar_loss(out, y, cfg)["total"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 1.0)
        opt.step()

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(2):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    # What autograd keeps for backward, per image: every distinct storage the forward and the loss
    # save (views of one storage counted once), as radar bench step's arena holds them.
    saved = {}

    def pack(t):
        st = t.untyped_storage()
        saved[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            out = model(x)
        loss = radar_loss(out, y, cfg)["total"]
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    activations = sum(n for ptr, n in saved.items() if ptr not in params)
    del out, loss
    record = {"bench": "pytorch_step", "config": a.config, "batch": b, "threads": a.threads, "device": a.device,
              "precision": a.precision, "ms_per_step": s * 1000, "images_per_s": b / s, "torch": torch.__version__,
              "saved_mib_per_image": activations / 2**20 / b}
    if cuda:
        record["peak_device_mib"] = torch.cuda.max_memory_allocated() / 2**20
        record["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main()
