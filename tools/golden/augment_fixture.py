"""OpenCV's results for the augmentation operations (run from the repository root):

    python tools/golden/augment_fixture.py

Writes Tests/RadarCoreTests/Fixtures/augment.safetensors (uint8): a 24x20 RGB input and
cv2.warpAffine (INTER_LINEAR, BORDER_REFLECT_101) with albumentations' ShiftScaleRotate matrix
(getRotationMatrix2D about the pixel-centre centre, plus the shift in pixels), cv2.GaussianBlur
(kernel 3 and 5, sigma 0) and JPEG re-compression through cv2.imencode/imdecode.
"""
import math
import os

import cv2
import numpy as np
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "RadarCoreTests", "Fixtures", "augment.safetensors")
AFFINE = [(7.0, 1.05, 0.03, -0.02), (-10.0, 0.9, -0.05, 0.05), (0.0, 1.1, 0.0, 0.0)]


def matrix(w, h, angle, scale, dx, dy):
    m = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), angle, scale)
    m[0, 2] += dx * w
    m[1, 2] += dy * h
    return m


def main():
    rng = np.random.default_rng(3)
    h, w = 20, 24
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(xx / 3.0), 128 + 90 * np.cos(yy / 4.0), 60 + 5 * xx + 3 * yy], axis=-1)
    img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    out = {"input": img}
    for i, (a, s, dx, dy) in enumerate(AFFINE):
        out[f"affine{i}"] = cv2.warpAffine(img, matrix(w, h, a, s, dx, dy), (w, h), flags=cv2.INTER_LINEAR,
                                           borderMode=cv2.BORDER_REFLECT_101)
    for k in (3, 5):
        out[f"blur{k}"] = cv2.GaussianBlur(img, (k, k), 0)
    for q in (70, 95):
        ok, enc = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, q])
        out[f"jpeg{q}"] = cv2.cvtColor(cv2.imdecode(enc, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, OUT, metadata={"opencv": cv2.__version__})
    print("wrote", OUT)


if __name__ == "__main__":
    main()
