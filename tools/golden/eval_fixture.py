"""Writes eval-mode references for the golden parity cases (run from the repository root, after
parity_fixtures.py):

    python tools/golden/eval_fixture.py

For every case it loads the case's weights and batch and runs one forward of the PyTorch reference
after model.eval() (BatchNorm normalising with the running statistics the weights file holds,
dropout off), the computation behind `radar evaluate`, `radar predict` and validation, and writes
Fixtures/parity/<case>/eval.safetensors: every output as `out.<name>` (F32), and each image's
interpretability outputs recomputed the way `radar predict --explain` reports them
(`explain.<name>`, per image: sigmoid of the branch, reasoning and external logits, of each
iteration's logit, the gate, the attention over the evidence tokens per iteration). The metadata
holds the float32 reference's own distance from a float64 run (`float64_floor.out_rel`).
"""
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from fixture_cases import ROOT, load_case  # noqa: E402

CASES = ["tiny_dual", "small_dual", "tiny_badm_only"]


def run(name, dtype):
    _, model, batch = load_case(name, dtype)
    model.eval()
    with torch.no_grad():
        out = model(batch["images"].float().to(dtype))
    return {k: v.detach() for k, v in out.items()}


def main():
    for name in CASES:
        out32, out64 = run(name, torch.float32), run(name, torch.float64)
        tensors = {f"out.{k}": v.float().contiguous() for k, v in out32.items()}
        s = torch.sigmoid
        tensors["explain.boundary_probability"] = s(out32["badm_logit"]).reshape(-1).contiguous()
        tensors["explain.frequency_probability"] = s(out32["aadm_logit"]).reshape(-1).contiguous()
        tensors["explain.reasoning_probability"] = s(out32["reasoning_logit"]).reshape(-1).contiguous()
        tensors["explain.external_probability"] = s(out32["external_logit"]).reshape(-1).contiguous()
        tensors["explain.iteration_probabilities"] = s(out32["iteration_logits"]).contiguous()
        tensors["explain.attention"] = out32["attention_history"].clone()
        tensors["explain.probability"] = out32["prob"].reshape(-1).clone()
        tensors["explain.gate"] = out32["gating_alpha"].reshape(-1).clone()
        worst = max(float((out32[k].double() - out64[k]).abs().max() / (out64[k].abs().max() + 1e-30))
                    for k in out32 if out32[k].numel() > 0)
        meta = {"generator": "tools/golden/eval_fixture.py", "torch": torch.__version__, "float64_floor.out_rel": repr(worst)}
        path = os.path.join(ROOT, name, "eval.safetensors")
        save_file(tensors, path, metadata=meta)
        print(f"{name}: {len(tensors)} tensors, {os.path.getsize(path)} bytes, float32-vs-float64 output floor {worst:.2e}")


if __name__ == "__main__":
    main()
