"""Image classification transforms, seeded per sample so that a resumed run augments identically.

Train: random-resized-crop (scale 0.08–1, ratio 3/4–4/3, torchvision's sampling rule) and a horizontal
flip with probability 1/2, drawn from ``default_rng([seed, epoch, sample_id])`` instead of torch's global
generator (whose state differs per DataLoader worker and is not part of a checkpoint).
Eval: resize the short side to ``size / 0.875`` and center-crop ``size``. Both normalize with the ImageNet
mean and standard deviation.
"""

from __future__ import annotations

import math

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_CROP_FRACTION = 0.875


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) following ``torchvision.transforms.RandomResizedCrop.get_params``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback: the largest center crop within the ratio range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def image_tensor(img, size: int, *, train: bool, seed: int, epoch: int, sample_id: int) -> torch.Tensor:
    import torchvision.transforms.functional as TF

    img = img.convert("RGB")
    if train:
        rng = np.random.default_rng([seed, epoch, sample_id])
        top, left, h, w = random_resized_crop_box(img.width, img.height, rng)
        img = TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)
        if rng.random() < 0.5:
            img = TF.hflip(img)
    else:
        img = TF.resize(img, int(round(size / EVAL_CROP_FRACTION)), antialias=True)
        img = TF.center_crop(img, [size, size])
    return TF.normalize(TF.to_tensor(img), IMAGENET_MEAN, IMAGENET_STD)
