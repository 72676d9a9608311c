"""The golden parity cases as the fixture scripts after parity_fixtures.py read them back: a
case's config, its weights (F16 on disk, or another case's through `weights_from`) loaded into the
PyTorch reference, and its batch."""
import json
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
from radar_reference import RADAR  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "RadarCoreTests", "Fixtures", "parity")


def weights_dir(name):
    d = os.path.join(ROOT, name)
    f = os.path.join(d, "weights_from")
    return os.path.join(ROOT, open(f).read().strip()) if os.path.exists(f) else d


def load_case(name, dtype=torch.float32):
    """(config, model with the case's weights in `dtype`, batch tensors)."""
    d = os.path.join(ROOT, name)
    cfg = json.load(open(os.path.join(d, "config.json")))
    torch.manual_seed(0)
    model = RADAR(cfg)
    state = {k: (v.float() if v.dtype == torch.float16 else v) for k, v in load_file(os.path.join(weights_dir(name), "weights.safetensors")).items()}
    model.load_state_dict(state, strict=True)
    return cfg, model.to(dtype), load_file(os.path.join(d, "batch.safetensors"))
