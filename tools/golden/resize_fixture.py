"""Fixture for the evaluation resize: cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR), which is
what the reference's evaluation transform (albumentations A.Resize) calls on uint8 RGB frames.

Writes Tests/RadarCoreTests/Fixtures/resize.safetensors: for each case an input image `in<i>`
(H, W, 3 uint8, random with smooth and sharp regions) and OpenCV's output `out<i>`; the metadata has
the cases as JSON and the OpenCV version. Run: python tools/golden/resize_fixture.py (needs
opencv-python-headless, numpy, safetensors).
"""
import json
import pathlib

import cv2
import numpy as np
from safetensors.numpy import save_file

OUT = pathlib.Path(__file__).resolve().parents[2] / "Tests/RadarCoreTests/Fixtures/resize.safetensors"

# (input height, input width, output height, output width)
CASES = [
    (48, 48, 32, 32),     # the case a user found (area-averaged before: up to 0.09 apart in probability)
    (53, 37, 32, 32),     # odd sizes, shrink in both axes, a scalar tail in each row
    (20, 20, 32, 32),     # enlarge
    (64, 64, 32, 32),     # exact halving: OpenCV switches to its 2x2 area average
    (100, 150, 224, 224), # enlarge both, unequal factors
    (300, 260, 224, 224), # a typical face crop shrunk to the model size
    (17, 250, 64, 64),    # enlarge one axis, shrink the other
    (224, 224, 224, 224), # no-op
    (31, 29, 30, 33),     # nearly 1:1, row length 99 (not a multiple of 16)
    (40, 41, 7, 5),       # row length 15: shorter than one 16-byte vector
    (90, 80, 45, 37),     # row length 111
    (13, 11, 29, 43),     # enlarge, row length 129
    (9, 200, 1, 1),       # one pixel
]


def image(rng, h, w):
    y, x = np.mgrid[0:h, 0:w]
    smooth = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) * 7) % 256], -1)
    noise = rng.integers(0, 256, (h, w, 3))
    mask = rng.random((h, w, 1)) < 0.5
    return np.where(mask, smooth, noise).astype(np.uint8)


def main():
    rng = np.random.default_rng(20261201)
    out = {}
    for i, (h, w, oh, ow) in enumerate(CASES):
        img = image(rng, h, w)
        out[f"in{i}"] = img
        out[f"out{i}"] = cv2.resize(img, (ow, oh), interpolation=cv2.INTER_LINEAR)
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, OUT,
              metadata={"opencv": cv2.__version__, "cases": json.dumps(CASES)})
    print(f"wrote {OUT} ({len(CASES)} cases, OpenCV {cv2.__version__})")


if __name__ == "__main__":
    main()
