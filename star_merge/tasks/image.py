"""Raw images for image classification: the image processor applied on the fly, optional seeded augmentation.

Augmentation follows transformers' image-classification example: a random resized crop (scale 0.08-1, aspect
3/4-4/3) and a horizontal flip; images no larger than ``SMALL_IMAGE`` pixels get a random crop with 4 pixels of
padding and a flip instead. Each example's draw is a pure function of (seed, epoch, example index), so runs
are deterministic and a resumed run sees the same images as an uninterrupted one.
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch

__all__ = ["ImageTransform", "INDEX_COLUMN", "SMALL_IMAGE", "image_size", "process_images"]

INDEX_COLUMN = "__example_index__"
SMALL_IMAGE = 64


def image_size(processor) -> tuple[int, int]:
    """(height, width) the processor produces (a timm processor: its ``data_config['input_size']``)."""
    timm_size = (getattr(processor, "data_config", None) or {}).get("input_size")
    if timm_size:
        return int(timm_size[-2]), int(timm_size[-1])
    size = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    size = size or getattr(processor, "size", None) or {}
    size = size if isinstance(size, dict) else dict(size.__dict__) if hasattr(size, "__dict__") else {}
    if size.get("height") and size.get("width"):
        return int(size["height"]), int(size["width"])
    edge = size.get("shortest_edge") or size.get("longest_edge") or 224
    return int(edge), int(edge)


def _rgb(image):
    return image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image


def random_resized_crop(image, size: tuple[int, int], rng: random.Random, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop on a PIL image, drawing from ``rng``."""
    from PIL import Image

    w, h = image.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
            break
    else:  # central crop of the closest allowed aspect
        cw, ch = w, h
        if w / h < ratio[0]:
            ch = int(round(w / ratio[0]))
        elif w / h > ratio[1]:
            cw = int(round(h * ratio[1]))
        left, top = (w - cw) // 2, (h - ch) // 2
    return image.resize((size[1], size[0]), Image.BILINEAR, box=(left, top, left + cw, top + ch))


def padded_random_crop(image, rng: random.Random, padding: int = 4):
    """A random crop of the image's own size from the image zero-padded by ``padding`` pixels."""
    from PIL import Image

    w, h = image.size
    canvas = Image.new(image.mode, (w + 2 * padding, h + 2 * padding))
    canvas.paste(image, (padding, padding))
    left, top = rng.randint(0, 2 * padding), rng.randint(0, 2 * padding)
    return canvas.crop((left, top, left + w, top + h))


class ImageTransform:
    """``dataset.set_transform`` callable: PIL ``image`` column -> ``pixel_values`` (+ ``labels``)."""

    def __init__(self, processor, augment: bool = False, seed: int = 0):
        self.processor, self.augment, self.seed, self.epoch = processor, bool(augment), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def plain(self) -> "ImageTransform":
        return ImageTransform(self.processor, augment=False, seed=self.seed)

    def _augment(self, image, index: int):
        from PIL import ImageOps

        from ..seeding import mix_seed

        rng = random.Random(mix_seed(self.seed, self.epoch, index))
        if min(image.size) <= SMALL_IMAGE:
            image = padded_random_crop(image, rng)
        else:
            image = random_resized_crop(image, image_size(self.processor), rng)
        return ImageOps.mirror(image) if rng.random() < 0.5 else image

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        out = {k: (torch.as_tensor(v) if k == "labels" else v) for k, v in batch.items()
               if k not in ("image", INDEX_COLUMN)}
        if "image" in batch:  # (a column read such as dataset["labels"] passes without images)
            images = [_rgb(im) for im in batch["image"]]
            if self.augment:
                images = [self._augment(im, i) for im, i in zip(images, batch[INDEX_COLUMN])]
            out["pixel_values"] = process_images(self.processor, images)
        return out


def process_images(processor, images) -> torch.Tensor:
    return processor(images=images, return_tensors="pt")["pixel_values"]
