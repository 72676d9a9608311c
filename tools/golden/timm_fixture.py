"""Writes a small timm ViT checkpoint and timm's own pos_embed resampling of it, for the
pretrained-weight tests (run from the repository root):

    python tools/golden/timm_fixture.py

Tests/RadarCoreTests/Fixtures/timm/vit_tiny_grid4.safetensors: a timm VisionTransformer (patch 8,
embed 16, depth 1, heads 2, img 32 -> 4x4 grid, with the ImageNet-style head.* tensors), saved as
timm names it. pos_embed_grid6 / pos_embed_grid3 hold timm.layers.resample_abs_pos_embed's output
for 6x6 (upsampling) and 3x3 (antialiased downsampling) grids.
"""
import os

import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "RadarCoreTests", "Fixtures", "timm")


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(5)
    model = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1,
                                                             num_heads=2, num_classes=10)
    with torch.no_grad():
        model.pos_embed.normal_(0, 0.5)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(OUT, "vit_tiny_grid4.safetensors"))
    pos = state["pos_embed"]
    expected = {f"pos_embed_grid{g}": resample_abs_pos_embed(pos, new_size=(g, g), num_prefix_tokens=1).contiguous()
                for g in (6, 3)}
    save_file(expected, os.path.join(OUT, "pos_embed_resampled.safetensors"), metadata={"timm": timm.__version__})
    print("wrote", sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()
