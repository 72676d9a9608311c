"""Writes PyTorch CPU autocast (bf16) references for the golden parity cases (run from the
repository root, after parity_fixtures.py):

    python tools/golden/autocast_fixture.py

For small_dual and tiny_badm_only it loads the case's weights and batch, runs one train-mode
forward under torch.autocast("cpu", dtype=torch.bfloat16) (the loss too, as AMP training code
does) and the backward, and writes Fixtures/parity/<case>/autocast_bf16.safetensors: outputs and
loss terms (F32) and every gradient (BF16: its own rounding, relative 2^-9, is far below the
distances below). The metadata holds PyTorch's own bf16-vs-fp32 distances on the same case, from
which the tests derive their tolerances: `distance.grad_rel_l2` (relative L2 over all gradients),
`distance.loss_rel` and `distance.logit_max`, against an fp32 run of the same code.
"""
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from fixture_cases import ROOT, load_case  # noqa: E402
from radar_reference import radar_loss  # noqa: E402

CASES = ["small_dual", "tiny_badm_only"]


def run(name, autocast):
    cfg, model, batch = load_case(name)
    model.train()
    x, y = batch["images"].float(), batch["labels"].float()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(x)
        loss = radar_loss(out, y, cfg)
    loss["total"].backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach().float() for k, v in out.items()}, {k: v.detach().float() for k, v in loss.items()}, grads


def main():
    for name in CASES:
        out16, loss16, grad16 = run(name, True)
        out32, loss32, grad32 = run(name, False)
        num = sum(float(((grad16[k] - grad32[k]) ** 2).sum()) for k in grad32)
        den = sum(float((grad32[k] ** 2).sum()) for k in grad32)
        meta = {"generator": "tools/golden/autocast_fixture.py", "torch": torch.__version__,
                "distance.grad_rel_l2": repr((num / den) ** 0.5),
                "distance.loss_rel": repr(abs(float(loss16["total"]) - float(loss32["total"])) / abs(float(loss32["total"]))),
                "distance.logit_max": repr(float((out16["logit"] - out32["logit"]).abs().max()))}
        tensors = {f"out.{k}": v.contiguous() for k, v in out16.items()}
        tensors.update({f"loss.{k}": v.reshape(()) for k, v in loss16.items()})
        tensors.update({f"grad.{k}": v.to(torch.bfloat16).contiguous() for k, v in grad16.items()})
        path = os.path.join(ROOT, name, "autocast_bf16.safetensors")
        save_file(tensors, path, metadata=meta)
        print(f"{name}: {len(tensors)} tensors, {os.path.getsize(path) / 1e6:.2f} MB, PyTorch bf16 vs fp32: "
              f"grad rel L2 {meta['distance.grad_rel_l2']}, loss rel {meta['distance.loss_rel']}, logit max {meta['distance.logit_max']}")


if __name__ == "__main__":
    main()
