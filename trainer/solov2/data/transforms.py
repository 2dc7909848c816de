"""Per-sample geometry: resize to fit a scale, horizontal flip, pad to a fixed canvas.

All functions are pure: they take a :class:`~.coco.Sample` and return a new one.

Training augmentations are the functions in :data:`TRAIN_AUGMENTATIONS`, applied in order to a
:class:`DecodePlan` (the size and mirroring the loader decodes an image with). Each draws from its own
``random.Random``, seeded from the image's seed (itself from ``(seed, epoch, index)``) and the
augmentation's name, so a sample is reproduced exactly whatever process decodes it, and adding an
augmentation changes no draw of the others. ``scale`` and ``flip`` share the image's own stream, in that
order, so that their draws are those of the first releases.

Masks are resized bilinearly and thresholded at 0.5 rather than with nearest neighbour: COCO images are
mostly enlarged (640x480 -> 1067x800), where nearest repeats whole source pixels (a 1.67-pixel staircase,
and torch's ``nearest`` is also shifted by up to half a source pixel) while the thresholded bilinear mask
follows the same sub-pixel boundary as the bilinearly resized image. It costs about 1.5 ms per instance at
1067x800 on one core (nearest: 0.7 ms), small next to JPEG decoding and batch assembly.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..config import DataConfig
from .coco import Sample
from .rasterize import resize_image

__all__ = [
    "TRAIN_AUGMENTATIONS",
    "DecodePlan",
    "EvalTransform",
    "TrainTransform",
    "fit_into",
    "fit_size",
    "hflip_sample",
    "pad_to_canvas",
    "resize_sample",
]

_MASK_CHUNK = 16  # masks resized per interpolate call (bounds the float32 working memory)


def fit_size(height: int, width: int, img_scale: Sequence[int]) -> tuple[int, int]:
    """Size ``(h, w)`` of an image rescaled, aspect ratio kept, to fit inside ``img_scale``.

    ``img_scale`` is ``(long side, short side)`` in either order; the factor is
    ``min(long / max(h, w), short / min(h, w))`` and each side is rounded to nearest (``int(x + 0.5)``),
    like mmdetection's ``keep_ratio=True`` resize. Example: 480x640 in (1333, 800) -> 800x1067.
    """
    long_side, short_side = max(img_scale), min(img_scale)
    factor = min(long_side / max(height, width), short_side / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def fit_into(size: tuple[int, int], canvas: tuple[int, int]) -> tuple[int, int]:
    """``size`` unchanged if it fits inside ``canvas`` (both ``(h, w)``), else scaled down (aspect kept)
    until it does. Images are never cropped: cropping would cut annotations silently."""
    (height, width), (ch, cw) = size, canvas
    if height <= ch and width <= cw:
        return size
    factor = min(ch / height, cw / width)
    return min(ch, max(1, int(height * factor + 0.5))), min(cw, max(1, int(width * factor + 0.5)))


def resize_sample(sample: Sample, size: tuple[int, int]) -> Sample:
    """Resize an unpadded sample to ``size = (h, w)``: the image as the training loader resizes it
    (:func:`~.rasterize.resize_image`, OpenCV, for uint8 images; others bilinearly, antialiased when
    shrinking), masks bilinearly then ``>= 0.5``, boxes scaled and clipped. Instances whose mask
    vanishes are dropped."""
    image, masks, boxes, labels = sample.image, sample.masks, sample.boxes, sample.labels
    old_h, old_w = image.shape[-2:]
    height, width = size
    if (old_h, old_w) == (height, width):
        return sample._replace(image_size=(height, width))
    if image.dtype == torch.uint8:  # evaluation and predict see the pixels training saw
        image = resize_image(np.ascontiguousarray(image.permute(1, 2, 0).numpy()), size)
    else:
        x = image[None].contiguous(memory_format=torch.channels_last)
        image = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    if masks.shape[0]:
        chunks = [
            F.interpolate(m[None].float(), size=size, mode="bilinear", align_corners=False)[0] >= 0.5
            for m in masks.split(_MASK_CHUNK)
        ]
        masks = torch.cat(chunks).to(torch.uint8)
        keep = masks.flatten(1).any(1).bool()
        if not bool(keep.all()):
            masks, boxes, labels = masks[keep], boxes[keep], labels[keep]
    else:
        masks = masks.new_zeros(0, height, width)
    scale = torch.tensor([width / old_w, height / old_h, width / old_w, height / old_h])
    boxes = boxes * scale
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return sample._replace(image=image, masks=masks, boxes=boxes, labels=labels, image_size=(height, width))


def hflip_sample(sample: Sample) -> Sample:
    """Mirror an unpadded sample left-right: image, masks and boxes (``x1' = W - x2``, ``x2' = W - x1``)."""
    if tuple(sample.image.shape[-2:]) != tuple(sample.image_size):
        raise ValueError("hflip_sample: flip before padding (the image holds padding)")
    width = sample.image.shape[-1]
    boxes = sample.boxes.clone()
    boxes[:, 0], boxes[:, 2] = width - sample.boxes[:, 2], width - sample.boxes[:, 0]
    return sample._replace(image=sample.image.flip(-1), masks=sample.masks.flip(-1), boxes=boxes)


def pad_to_canvas(sample: Sample, canvas: tuple[int, int], fill: Sequence[int]) -> Sample:
    """Pad image and masks to ``canvas = (h, w)``, content at the top-left (boxes unchanged): the image
    with the RGB colour ``fill`` (``DataConfig.pad_value`` in the loaders), the masks with zeros."""
    height, width = sample.image.shape[-2:]
    ch, cw = canvas
    if height > ch or width > cw:
        raise ValueError(f"pad_to_canvas: a {height}x{width} image does not fit the {ch}x{cw} canvas")
    if (height, width) == (ch, cw):
        return sample
    image = sample.image.new_empty(3, ch, cw)
    image[:] = torch.tensor(fill, dtype=image.dtype).view(3, 1, 1)
    image[:, :height, :width] = sample.image
    masks = sample.masks.new_zeros(sample.masks.shape[0], ch, cw)
    masks[:, :height, :width] = sample.masks
    return sample._replace(image=image, masks=masks)


class DecodePlan(NamedTuple):
    """How the training loader decodes one image: at ``size = (h, w)``, mirrored if ``flip``."""

    size: tuple[int, int]
    flip: bool = False


class ImageInfo(NamedTuple):
    """What an augmentation knows of the image: its stored size and the canvas it goes on, ``(h, w)``."""

    original_size: tuple[int, int]
    canvas: tuple[int, int]


Augmentation = Callable[[DecodePlan, ImageInfo, random.Random, DataConfig], DecodePlan]
"""``(plan, image, rng, cfg) -> plan``: one training augmentation; it draws only from ``rng``."""


def scale(plan: DecodePlan, image: ImageInfo, rng: random.Random, cfg: DataConfig) -> DecodePlan:
    """Multi-scale training: one short side of ``multiscale_short_sides`` (if set; long side capped at
    ``max(img_scale)``), else ``img_scale``; shrunk further if needed to fit the canvas. One draw."""
    pick = rng.random()
    img_scale, sides = tuple(cfg.img_scale), tuple(cfg.multiscale_short_sides)
    if sides:
        img_scale = (max(img_scale), sides[min(int(pick * len(sides)), len(sides) - 1)])
    return plan._replace(size=fit_into(fit_size(*image.original_size, img_scale), image.canvas))


def flip(plan: DecodePlan, image: ImageInfo, rng: random.Random, cfg: DataConfig) -> DecodePlan:
    """Horizontal flip with probability ``flip_prob``. One draw."""
    return plan._replace(flip=rng.random() < cfg.flip_prob)


TRAIN_AUGMENTATIONS: list[Augmentation] = [scale, flip]
"""The training augmentations, in order. A new one is a function appended here (named uniquely)."""

_IMAGE_STREAM = ("scale", "flip")  # draw, in this order, from the image's own stream (see above)


def augmentation_rng(seed: int, name: str) -> random.Random:
    """The random stream of augmentation ``name`` for the image whose seed is ``seed``."""
    return random.Random(seed ^ (zlib.crc32(name.encode()) << 32))


class TrainTransform:
    """Training augmentation: the :data:`TRAIN_AUGMENTATIONS` (rescale, shrink to fit the canvas,
    flip), then padding to the canvas."""

    def __init__(self, cfg: DataConfig, augmentations: Sequence[Augmentation] = ()) -> None:
        self.cfg = cfg
        self.augmentations = list(augmentations or TRAIN_AUGMENTATIONS)

    def plan(self, original_size: tuple[int, int], *, canvas: tuple[int, int], seed: int) -> DecodePlan:
        """The size ``(h, w)`` and the flip an image of ``original_size`` gets from the image's ``seed``.
        The training loader decodes straight to them (:meth:`~.coco.CocoInstances.load_resized`)."""
        image = ImageInfo(tuple(original_size), tuple(canvas))  # type: ignore[arg-type]
        plan = DecodePlan(fit_into(fit_size(*image.original_size, self.cfg.img_scale), image.canvas))
        shared = random.Random(seed)
        for augment in self.augmentations:
            name = augment.__name__
            rng = shared if name in _IMAGE_STREAM else augmentation_rng(seed, name)
            plan = augment(plan, image, rng, self.cfg)
        return plan

    def __call__(self, sample: Sample, *, canvas: tuple[int, int], seed: int) -> Sample:
        size, flipped = self.plan(sample.original_size, canvas=canvas, seed=seed)
        sample = resize_sample(sample, size)
        if flipped:
            sample = hflip_sample(sample)
        return pad_to_canvas(sample, canvas, self.cfg.pad_value)


class EvalTransform:
    """Evaluation: rescale to fit ``eval_scale`` (``test_img_scale``, else ``img_scale``; shrunk further if
    needed to fit the canvas), pad."""

    def __init__(self, cfg: DataConfig) -> None:
        self.img_scale = cfg.eval_scale
        self.fill = cfg.pad_value

    def __call__(self, sample: Sample, *, canvas: tuple[int, int]) -> Sample:
        size = fit_into(fit_size(*sample.original_size, self.img_scale), canvas)
        return pad_to_canvas(resize_sample(sample, size), canvas, self.fill)
