"""The reference's data path, timed the way `radar bench data --data DIR` times ours, on the same
images (the PNG members of a prepared dataset's shards; JPEG = the same images re-encoded at
quality 95 by OpenCV, as ours are by libjpeg-turbo), one thread (cv2.setNumThreads(1)).

    python bench/data_reference.py --data DIR [--images 300]

Prints one JSON object per measurement: decode (+ augment) + normalise images/s per thread, and
median ms per image of each augmentation operation alone. Needs opencv-python-headless,
albumentations, numpy.
"""
import argparse
import glob
import json
import platform
import statistics
import tarfile
import time

import albumentations as A
import cv2
import numpy as np


def shard_pngs(data, n=32):
    out = []
    for path in sorted(glob.glob(f"{data}/shard-*.tar")):
        with tarfile.open(path) as t:
            for m in t:
                if m.name.endswith(".png"):
                    out.append(t.extractfile(m).read())
                    if len(out) == n:
                        return out
    return out


def median_ms(body, repeats=31):
    body()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        body()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--images", type=int, default=300)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    pngs = shard_pngs(args.data)
    def decode(b):
        return cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    jpgs = [cv2.imencode(".jpg", cv2.cvtColor(decode(b), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes() for b in pngs]
    size = decode(pngs[0]).shape[0]
    machine = {"cpu": platform.processor() or platform.machine(), "opencv": cv2.__version__, "albumentations": A.__version__, "threads": 1}
    # MODEL.md section 8, as the reference writes it with albumentations.
    train = A.Compose([
        A.HorizontalFlip(p=0.5),
        A.Affine(translate_percent=(-0.05, 0.05), scale=(0.9, 1.1), rotate=(-10, 10), border_mode=cv2.BORDER_REFLECT_101, p=0.3),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.ImageCompression(quality_range=(70, 100))], p=0.3),
        A.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02, p=0.3),
        A.Normalize(),
    ])
    plain = A.Compose([A.Normalize()])
    for name, blobs in (("png", pngs), ("jpeg", jpgs)):
        for augment in (False, True):
            t = train if augment else plain
            t0 = time.perf_counter()
            for i in range(args.images):
                t(image=decode(blobs[i % len(blobs)]))
            rate = args.images / (time.perf_counter() - t0)
            print(json.dumps({"bench": "decode_reference", "format": name, "size": size, "augment": augment,
                              "images_per_s_per_thread": rate, "machine": machine}))
    img = decode(pngs[0])
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), 7, 1.05)
    m[0, 2] += 0.03 * w
    m[1, 2] += -0.02 * h
    jitter = {k: A.ColorJitter(**{k: (v, v)}, p=1) for k, v in (("brightness", 1.05), ("contrast", 1.05), ("saturation", 1.05))}
    hue = A.ColorJitter(brightness=0, contrast=0, saturation=0, hue=(0.01, 0.01), p=1)
    norm = A.Normalize()
    ops = {
        "flip": median_ms(lambda: cv2.flip(img, 1)),
        "shift_scale_rotate": median_ms(lambda: cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)),
        "gaussian_blur_5": median_ms(lambda: cv2.GaussianBlur(img, (5, 5), 0)),
        "jpeg_q85": median_ms(lambda: cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])[1], cv2.IMREAD_COLOR)),
        "brightness": median_ms(lambda: jitter["brightness"](image=img)),
        "contrast": median_ms(lambda: jitter["contrast"](image=img)),
        "saturation": median_ms(lambda: jitter["saturation"](image=img)),
        "hue": median_ms(lambda: hue(image=img)),
        "normalize": median_ms(lambda: norm(image=img)),
    }
    print(json.dumps({"bench": "augment_ops_ms_per_image_reference", "size": size, "ops": ops, "machine": machine}))


if __name__ == "__main__":
    main()
