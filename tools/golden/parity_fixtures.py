"""Writes the golden parity fixtures for `radar dump-step` (run from the repository root):

    python tools/golden/parity_fixtures.py

For each case it writes Tests/RadarCoreTests/Fixtures/parity/<case>/{config.json, weights, batch,
expected}.safetensors. Weights are drawn, rounded to float16 (stored as F16, so the file is half
the size and both sides start from the same exact values), and run through radar_reference.py:
one train-mode forward/backward, and for cases with steps, K AdamW steps at a constant LR with
clip 1.0. A float64 run of the same weights gives the bounds for the tensors whose exact gradient
is zero (MODEL.md parity notes), stored in the metadata as `bound.<tensor>`.
"""
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from radar_reference import RADAR, full_config, radar_loss  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "RadarCoreTests", "Fixtures", "parity")

# The artifact CNNs (32/64/128 channels, fixed by MODEL.md) make every config ~0.25M parameters,
# so to stay under the 5 MB fixture budget the 3-step case stores losses and parameters after the
# steps but not its first gradients (the other two cases store every gradient), and the ablation
# case reuses its weights file.
TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, evidence_dim=16, fft_size=16,
            dropout=0.0, branch_dropout=0.0)
CASES = {
    # The tiny preset, both branches: 3 AdamW steps.
    "tiny_dual": dict(config=TINY, batch=4, steps=3, seed=1, grads=False),
    # Different sizes: 2x2 patch grid, one block, 2 heads, 2 iterations, FFT 24, gating 0.3.
    "small_dual": dict(config=dict(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2, evidence_dim=8,
                                   reasoning_iterations=2, reasoning_heads=2, fft_size=24, dropout=0.0,
                                   branch_dropout=0.0, gating_init=0.3), batch=3, steps=0, seed=2, grads=True),
    # Ablation: frequency branch off (one-branch ERM, single classifiers); tiny_dual's weights.
    "tiny_badm_only": dict(config=dict(TINY, use_aadm=False), batch=4, steps=0, seed=1, grads=True, weights_from="tiny_dual"),
}

LR, WD = 1e-3, 0.05


def zero_gradient_tensors(model):
    """Parameters whose exact gradient is zero (bias before train-mode BatchNorm, key biases)."""
    names = [f"{b}.{e}.{i}.bias" for b, e in (("badm", "edge_encoder"), ("aadm", "freq_encoder")) for i in (0, 3, 6)]
    names.append("reasoning.attention.k_proj.bias")
    names += [n for n, _ in model.named_parameters() if n.endswith("attn.qkv.bias")]  # key rows only
    return names


def after_step_bounds(model, after32, after64, d_model):
    """Metadata bounds for the weights and buffers after AdamW steps. Round-off in near-zero
    gradient elements becomes parameter moves of up to about lr per step (MODEL.md parity notes):
    beyond the zero-gradient tensors this reaches some ordinary tensors too, and BatchNorm running
    means inherit the moves of the conv bias before them. Wherever the float32 reference itself is
    further than the plain tolerance from its float64 run, the bound is 4x that distance."""
    zero, params, meta = set(zero_gradient_tensors(model)), dict(model.named_parameters()), {}
    for k, v in after32.items():
        if v.dtype == torch.int64:
            continue
        kind = "param" if k in params else "buffer"
        diff = (v.double() - after64[k]).abs()
        if k.endswith("attn.qkv.bias"):
            diff = diff[d_model:2 * d_model]
        floor = 4 * float(diff.max())
        plain = 1e-5 if kind == "param" else 1e-5 * float(v.abs().max())
        if k in zero:
            meta[f"bound.{kind}.{k}"] = repr(max(floor, 1e-6))
        elif floor > plain:
            meta[f"bound.{kind}.{k}"] = repr(floor)
    return meta


def draw_weights(model, seed):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, t in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(4, dtype=torch.int64)
        elif name.endswith("running_var"):
            state[name] = (1 + 0.5 * torch.rand(t.shape, generator=g)).half().float()
        elif name.endswith("running_mean"):
            state[name] = (0.2 * torch.randn(t.shape, generator=g)).half().float()
        else:
            fan = t.shape[-1] if t.dim() >= 2 else max(t.numel(), 1)
            if t.dim() == 4:
                fan = t.shape[1] * t.shape[2] * t.shape[3]
            std = 1.0 / max(fan, 1) ** 0.5 if t.dim() >= 2 else 0.1
            v = torch.randn(t.shape, generator=g) * std
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name.endswith("norm.weight") or \
                    (t.dim() == 1 and ".1.weight" in name or ".4.weight" in name or ".7.weight" in name):
                v = 1 + 0.1 * torch.randn(t.shape, generator=g)
            state[name] = v.half().float()
    return state


def run(case, dtype):
    cfg = case["config"]
    torch.manual_seed(0)
    model = RADAR(cfg)
    state = draw_weights(model, case["seed"])
    model.load_state_dict(state, strict=True)
    model = model.to(dtype)
    model.train()
    g = torch.Generator().manual_seed(100 + case["seed"])
    c = full_config(cfg)
    images = torch.randn(case["batch"], 3, c["img_size"], c["img_size"], generator=g).half().float()
    labels = torch.tensor([i % 2 for i in range(case["batch"])], dtype=torch.float32)
    x, y = images.to(dtype), labels.to(dtype)
    out = model(x)
    loss = radar_loss(out, y, cfg)
    loss["total"].backward()
    result = {"out": {k: v.detach() for k, v in out.items()}, "loss": {k: v.detach() for k, v in loss.items()},
              "grad": {n: (p.grad.detach().clone() if p.grad is not None else None) for n, p in model.named_parameters()}}
    if case["steps"]:
        model2 = RADAR(cfg)
        model2.load_state_dict(state, strict=True)
        model2 = model2.to(dtype)
        model2.train()
        opt = torch.optim.AdamW(model2.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD)
        step_losses = []
        for _ in range(case["steps"]):
            opt.zero_grad(set_to_none=True)
            l2 = radar_loss(model2(x), y, cfg)["total"]
            l2.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model2.parameters() if p.grad is not None], 1.0)
            opt.step()
            step_losses.append(l2.detach())
        result["steps"] = step_losses
        result["after"] = {k: v.detach().clone() for k, v in model2.state_dict().items()}
    return model, state, images, labels, result


def main():
    total = 0
    for name, case in CASES.items():
        d = os.path.join(ROOT, name)
        os.makedirs(d, exist_ok=True)
        model, state, images, labels, r32 = run(case, torch.float32)
        _, _, _, _, r64 = run(case, torch.float64)
        cfg = full_config(case["config"])
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(case["config"], f, indent=2, sort_keys=True)
        if "weights_from" in case:
            with open(os.path.join(d, "weights_from"), "w") as f:
                f.write(case["weights_from"] + "\n")
        else:
            save_file({k: (v.half() if v.dtype == torch.float32 else v) for k, v in state.items()}, os.path.join(d, "weights.safetensors"))
        save_file({"images": images.half(), "labels": labels}, os.path.join(d, "batch.safetensors"))
        expected, meta = {}, {"generator": "tools/golden/parity_fixtures.py", "torch": torch.__version__,
                              "steps": str(case["steps"]), "lr": str(LR), "weight_decay": str(WD)}
        for k, v in r32["out"].items():
            expected[f"out.{k}"] = v.float().contiguous()
        for k, v in r32["loss"].items():
            expected[f"loss.{k}"] = v.float().reshape(())
        for k, v in r32["grad"].items():
            if v is not None and case["grads"]:  # unused parameters: absent here, and must be exactly zero in ours
                expected[f"grad.{k}"] = v.float().contiguous()
        # Bounds for the zero-gradient tensors: 4x the float32-vs-float64 disagreement of the reference.
        d_model = cfg["embed_dim"]
        for n in zero_gradient_tensors(model):
            g32, g64 = r32["grad"].get(n), r64["grad"].get(n)
            if g32 is None or not case["grads"]:
                continue
            diff = (g32.double() - g64).abs()
            if n.endswith("attn.qkv.bias"):
                diff = diff[d_model:2 * d_model]
            meta[f"bound.grad.{n}"] = repr(max(4 * float(diff.max()), 1e-9))
        if case["steps"]:
            for i, l in enumerate(r32["steps"]):
                expected[f"loss.step{i}"] = l.float().reshape(())
            for k, v in r32["after"].items():
                kind = "param" if k in dict(model.named_parameters()) else "buffer"
                expected[f"{kind}.{k}"] = v.contiguous() if v.dtype == torch.int64 else v.float().contiguous()
            meta.update(after_step_bounds(model, r32["after"], r64["after"], d_model))
        # The float32 reference's own floor for everything else, for the record.
        worst = max(float(((r32["grad"][k].double() - r64["grad"][k]).abs().max() / (r64["grad"][k].abs().max() + 1e-30)))
                    for k in r32["grad"] if r32["grad"][k] is not None and k not in zero_gradient_tensors(model))
        meta["float64_floor.grad_rel"] = repr(worst)
        save_file(expected, os.path.join(d, "expected.safetensors"), metadata=meta)
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        total += size
        print(f"{name}: {len(expected)} tensors, {size / 1e6:.2f} MB, float32-vs-float64 grad floor {worst:.2e}")
    print(f"total {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
