"""Writes PyTorch's OneCycleLR learning rates and AdamW beta1 values (pct_start 0.1 as MODEL.md
fixes it, otherwise defaults: cos, div 25, final div 1e4, cycle_momentum 0.85-0.95)
for a few schedules (run from the repository root):

    python tools/golden/schedule_fixture.py
"""
import json
import os

import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "RadarCoreTests", "Fixtures", "onecycle.json")


def main():
    cases = []
    for max_lr, total in ((5e-4, 40), (1e-3, 7), (2e-3, 101)):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([p], lr=max_lr)
        # MODEL.md fixes pct_start 0.1 (torch's own default is 0.3); the rest are torch's defaults.
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total, pct_start=0.1)
        lrs, betas = [], []
        for _ in range(total):
            lrs.append(opt.param_groups[0]["lr"])
            betas.append(opt.param_groups[0]["betas"][0])
            opt.step()
            sched.step()
        cases.append({"max_lr": max_lr, "total_steps": total, "lr": lrs, "beta1": betas})
    with open(OUT, "w") as f:
        json.dump({"torch": torch.__version__, "cases": cases}, f)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
