"""Writes the golden fixture for RADAR's fixed image transforms (MODEL.md sections 2-3).

Run from the repository root with torch installed (see requirements.txt):
    python tools/golden/transforms.py
It writes Tests/RadarCoreTests/Fixtures/transforms.safetensors: inputs and PyTorch's outputs.
"""
import os
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "RadarCoreTests", "Fixtures", "transforms.safetensors")


def grayscale(x):
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def sobel(gray):
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    ky = kx.transpose(2, 3).contiguous()
    gx = F.conv2d(gray, kx, padding=1)
    gy = F.conv2d(gray, ky, padding=1)
    edge = torch.sqrt(gx ** 2 + gy ** 2)
    peak = edge.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    return torch.where(peak > 1e-8, edge / peak.clamp_min(1e-8), edge)


def fft_magnitude(gray):
    spec = torch.fft.fft2(gray)
    spec = torch.fft.fftshift(spec, dim=(-2, -1))
    return spec.abs()


def high_pass(mag):
    f = mag.shape[-1]
    c = f // 2
    yy, xx = torch.meshgrid(torch.arange(f, dtype=torch.float32), torch.arange(f, dtype=torch.float32), indexing="ij")
    dist = torch.sqrt((yy - c) ** 2 + (xx - c) ** 2)
    mask = torch.sigmoid((dist - f / 8) / 10)
    m = torch.log1p(mag * mask)
    lo = m.flatten(1).amin(dim=1).view(-1, 1, 1, 1)
    hi = m.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    return (m - lo) / (hi - lo).clamp_min(1e-8)


def main():
    g = torch.Generator().manual_seed(1234)
    out = {}
    # Normalised-image-like inputs: odd, even and non-square sizes.
    for name, (b, h, w) in {"a": (2, 24, 20), "b": (1, 17, 17)}.items():
        x = torch.randn(b, 3, h, w, generator=g)
        gray = grayscale(x)
        out[f"{name}.input"] = x
        out[f"{name}.gray"] = gray
        out[f"{name}.sobel"] = sobel(gray)
        for size in (8, 13, 32):
            r = F.interpolate(gray, size=(size, size), mode="bilinear", align_corners=False)
            out[f"{name}.resize{size}"] = r
            mag = fft_magnitude(r)
            out[f"{name}.fft{size}"] = mag
            out[f"{name}.highpass{size}"] = high_pass(mag)
    # A constant image: Sobel max is 0 (no division) and min-max hits the 1e-8 clamp.
    flat = torch.full((1, 3, 9, 9), 0.25)
    out["flat.input"] = flat
    out["flat.sobel"] = sobel(grayscale(flat))
    out["flat.highpass8"] = high_pass(fft_magnitude(F.interpolate(grayscale(flat), size=(8, 8), mode="bilinear", align_corners=False)))
    save_file({k: v.contiguous().float() for k, v in out.items()}, OUT, metadata={"generator": "tools/golden/transforms.py", "torch": torch.__version__})
    print(f"wrote {len(out)} tensors to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
