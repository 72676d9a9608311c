"""Writes the golden training-recipe case (run from the repository root, after parity_fixtures.py):

    python tools/golden/recipe_fixture.py

Fixtures/parity/tiny_recipe/: tiny_dual's config and weights (`weights_from`), a sequence of
micro-batches (`batch.safetensors`: images (M x B, 3, H, W), labels (M x B), taken B at a time in
order), and what the reference's training loop (MODEL.md section 8, dropout off) does with them:
each micro-batch's loss divided by the accumulation steps and backpropagated, and every A
micro-batches the global-norm clip at 1.0, AdamW, then OneCycleLR stepped (pct_start 0.1, cosine,
div 25, final div 1e4, beta1 cycling 0.95 -> 0.85 -> 0.95) over K = M / A optimizer steps.

Expected: `loss.micro<i>` (micro-batch i's total loss, before the division), `lr.step<k>` and
`beta1.step<k>` (what optimizer step k used), `grad_norm.step<k>` (the norm clip_grad_norm_
returned, before clipping), and every parameter and buffer after the K steps (`num_batches_tracked`
counts the micro-batches). Bounds from a float64 run, as parity_fixtures.py derives them.
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(__file__))
from parity_fixtures import ROOT, after_step_bounds  # noqa: E402
from radar_reference import RADAR, full_config, radar_loss  # noqa: E402

NAME, WEIGHTS_FROM = "tiny_recipe", "tiny_dual"
MICRO, ACCUM, STEPS = 4, 2, 12
LR, WD = 1e-3, 0.05


def run(cfg, state, images, labels, dtype):
    torch.manual_seed(0)
    model = RADAR(cfg)
    model.load_state_dict(state, strict=True)
    model = model.to(dtype)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=STEPS, pct_start=0.1)
    opt.zero_grad(set_to_none=True)
    r = {"micro": [], "lr": [], "beta1": [], "norm": []}
    for i in range(STEPS * ACCUM):
        x = images[i * MICRO:(i + 1) * MICRO].to(dtype)
        y = labels[i * MICRO:(i + 1) * MICRO].to(dtype)
        total = radar_loss(model(x), y, cfg)["total"]
        r["micro"].append(total.detach())
        (total / ACCUM).backward()
        if (i + 1) % ACCUM == 0:
            r["lr"].append(opt.param_groups[0]["lr"])
            r["beta1"].append(opt.param_groups[0]["betas"][0])
            norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 1.0)
            r["norm"].append(norm.detach())
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    r["after"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return model, r


def main():
    src = os.path.join(ROOT, WEIGHTS_FROM)
    cfg = json.load(open(os.path.join(src, "config.json")))
    state = {k: (v.float() if v.dtype == torch.float16 else v) for k, v in load_file(os.path.join(src, "weights.safetensors")).items()}
    c = full_config(cfg)
    g = torch.Generator().manual_seed(300)
    n = STEPS * ACCUM * MICRO
    images = torch.randn(n, 3, c["img_size"], c["img_size"], generator=g).half().float()
    labels = torch.randint(0, 2, (n,), generator=g).float()
    model, r32 = run(cfg, state, images, labels, torch.float32)
    _, r64 = run(cfg, state, images, labels, torch.float64)

    d = os.path.join(ROOT, NAME)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    with open(os.path.join(d, "weights_from"), "w") as f:
        f.write(WEIGHTS_FROM + "\n")
    save_file({"images": images.half(), "labels": labels}, os.path.join(d, "batch.safetensors"))

    expected = {}
    meta = {"generator": "tools/golden/recipe_fixture.py", "torch": torch.__version__, "steps": str(STEPS), "lr": str(LR),
            "weight_decay": str(WD), "micro_batch": str(MICRO), "accumulation_steps": str(ACCUM), "schedule": "onecycle"}
    for i, v in enumerate(r32["micro"]):
        expected[f"loss.micro{i}"] = v.float().reshape(())
    for k in range(STEPS):
        expected[f"lr.step{k}"] = torch.tensor(r32["lr"][k], dtype=torch.float32)
        expected[f"beta1.step{k}"] = torch.tensor(r32["beta1"][k], dtype=torch.float32)
        expected[f"grad_norm.step{k}"] = r32["norm"][k].float().reshape(())
    params = dict(model.named_parameters())
    for k, v in r32["after"].items():
        kind = "param" if k in params else "buffer"
        expected[f"{kind}.{k}"] = v.contiguous() if v.dtype == torch.int64 else v.float().contiguous()
    meta.update(after_step_bounds(model, r32["after"], r64["after"], c["embed_dim"]))
    loss_gap = max(abs(float(a) - float(b)) / max(abs(float(b)), 1e-30) for a, b in zip(r32["micro"], r64["micro"]))
    meta["float64_floor.loss_rel"] = repr(loss_gap)
    save_file(expected, os.path.join(d, "expected.safetensors"), metadata=meta)
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    bounded = sum(1 for k in meta if k.startswith("bound."))
    print(f"{NAME}: {len(expected)} tensors ({bounded} with float64-derived bounds), {size / 1e6:.2f} MB, "
          f"float32-vs-float64 loss floor {loss_gap:.2e}, losses {float(r32['micro'][0]):.5f} -> {float(r32['micro'][-1]):.5f}")


if __name__ == "__main__":
    main()
