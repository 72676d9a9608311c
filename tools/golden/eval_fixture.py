"""Writes eval-mode references for the golden parity cases (run from the repository root, after
parity_fixtures.py):

    python tools/golden/eval_fixture.py

For every case it loads the case's weights and batch and runs one forward of the PyTorch reference
after model.eval() (BatchNorm normalising with the running statistics the weights file holds,
dropout off), the computation behind `radar evaluate`, `radar predict` and validation, and writes
Fixtures/parity/<case>/eval.safetensors: every output as `out.<name>` (F32), and each image's
interpretability outputs recomputed the way `radar predict --explain` reports them
(`explain.<name>`, per image: sigmoid of the branch, reasoning and external logits, of each
iteration's logit, the gate, the attention over the evidence tokens per iteration, and the
attention rollout over the encoder, `explain.rollout`: the class token's row of the product of
each block's head-averaged self-attention mixed half and half with the identity, at the patches,
(B, grid, grid), from probabilities recomputed from each block's input by a hook). The metadata
holds the float32 reference's own distance from a float64 run (`float64_floor.out_rel`).
"""
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from fixture_cases import ROOT, load_case  # noqa: E402

CASES = ["tiny_dual", "small_dual", "tiny_badm_only"]


def rollout(probs):
    """Attention rollout (Abnar and Zuidema, 2020) as the matrix product: R = A_L ... A_1 with
    A = (mean over heads + I) / 2 per block; the class token's row at the patches, (B, g, g)."""
    b, _, t, _ = probs[0].shape
    eye = torch.eye(t, dtype=probs[0].dtype)
    r = eye.expand(b, t, t)
    for p in probs:
        r = (0.5 * p.mean(dim=1) + 0.5 * eye) @ r
    g = int(round((t - 1) ** 0.5))
    return r[:, 0, 1:].reshape(b, g, g)


def run(name, dtype):
    _, model, batch = load_case(name, dtype)
    model.eval()
    probs = []

    def capture(attn, inputs, _output):
        # timm's attention may be fused (no probabilities to read): recomputed from its input.
        x = inputs[0]
        b, n, c = x.shape
        qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        probs.append(torch.softmax(q @ k.transpose(-2, -1) * attn.scale, dim=-1))

    hooks = [blk.attn.register_forward_hook(capture) for blk in model.encoder.blocks]
    with torch.no_grad():
        out = model(batch["images"].float().to(dtype))
    for h in hooks:
        h.remove()
    out = {k: v.detach() for k, v in out.items()}
    out["rollout"] = rollout(probs)
    return out


def main():
    for name in CASES:
        out32, out64 = run(name, torch.float32), run(name, torch.float64)
        tensors = {f"out.{k}": v.float().contiguous() for k, v in out32.items() if k != "rollout"}
        s = torch.sigmoid
        tensors["explain.boundary_probability"] = s(out32["badm_logit"]).reshape(-1).contiguous()
        tensors["explain.frequency_probability"] = s(out32["aadm_logit"]).reshape(-1).contiguous()
        tensors["explain.reasoning_probability"] = s(out32["reasoning_logit"]).reshape(-1).contiguous()
        tensors["explain.external_probability"] = s(out32["external_logit"]).reshape(-1).contiguous()
        tensors["explain.iteration_probabilities"] = s(out32["iteration_logits"]).contiguous()
        tensors["explain.attention"] = out32["attention_history"].clone()
        tensors["explain.probability"] = out32["prob"].reshape(-1).clone()
        tensors["explain.gate"] = out32["gating_alpha"].reshape(-1).clone()
        tensors["explain.rollout"] = out32["rollout"].float().contiguous()
        worst = max(float((out32[k].double() - out64[k]).abs().max() / (out64[k].abs().max() + 1e-30))
                    for k in out32 if out32[k].numel() > 0)
        meta = {"generator": "tools/golden/eval_fixture.py", "torch": torch.__version__, "float64_floor.out_rel": repr(worst)}
        path = os.path.join(ROOT, name, "eval.safetensors")
        save_file(tensors, path, metadata=meta)
        print(f"{name}: {len(tensors)} tensors, {os.path.getsize(path)} bytes, float32-vs-float64 output floor {worst:.2e}")


if __name__ == "__main__":
    main()
