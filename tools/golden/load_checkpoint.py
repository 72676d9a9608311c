"""Loads a RADAR checkpoint written by the Swift trainer into the PyTorch reference model with
load_state_dict(strict=True) (run from the repository root):

    python tools/golden/load_checkpoint.py outputs/demo/best.safetensors.lz4

Accepts .safetensors.lz4 (decompressed with the `lz4` package) or plain .safetensors.
"""
import json
import os
import sys

import lz4.frame
import torch
from safetensors.torch import load

sys.path.insert(0, os.path.dirname(__file__))
from radar_reference import RADAR  # noqa: E402


def main(path):
    raw = open(path, "rb").read()
    if raw[:4] == b"\x04\x22\x4d\x18":
        raw = lz4.frame.decompress(raw)
    tensors = load(raw)
    n = int.from_bytes(raw[:8], "little")
    meta = json.loads(raw[8:8 + n])["__metadata__"]
    cfg = json.loads(meta["config"])
    model = RADAR(cfg)
    state = {k: v for k, v in tensors.items() if not k.startswith("optim.")}
    model.load_state_dict(state, strict=True)
    model.eval()
    print(f"{path}: {len(state)} model tensors loaded with strict=True; step {meta['step']}, epoch {meta['epoch']}")


if __name__ == "__main__":
    main(sys.argv[1])
