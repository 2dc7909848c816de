"""Generated images of simple shapes with instance masks: data for demos, tests and benchmarks.

Each instance is a filled rectangle, ellipse or triangle (its class) in a class-tinted colour on a
noisy background; later shapes occlude earlier ones, so masks are the visible parts, as in COCO.
Nothing is downloaded.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..structures import GroundTruth

CLASSES = ("rectangle", "ellipse", "triangle")
_BASE_COLOURS = torch.tensor([[220.0, 60.0, 60.0], [60.0, 200.0, 80.0], [70.0, 90.0, 230.0]])


def _shape_mask(kind: int, yy: Tensor, xx: Tensor, cy: float, cx: float, h: float, w: float) -> Tensor:
    if kind == 0:  # rectangle
        return ((yy - cy).abs() <= h / 2) & ((xx - cx).abs() <= w / 2)
    if kind == 1:  # ellipse
        return ((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1
    # triangle: apex at the top centre, base at the bottom
    top, bottom = cy - h / 2, cy + h / 2
    frac = ((yy - top) / max(h, 1e-6)).clamp(0, 1)
    return (yy >= top) & (yy <= bottom) & ((xx - cx).abs() <= frac * w / 2)


def draw_instances(
    height: int, width: int, num: int, generator: torch.Generator, *, min_size: int = 8, max_frac: float = 0.6
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw ``num`` random shapes on one ``height x width`` image.

    Returns ``image [3, H, W]`` uint8, ``masks [num, H, W]`` uint8 (visible parts; may be empty when a
    shape is fully covered), ``labels [num]`` int64 in ``[0, len(CLASSES))``.
    """

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    yy = torch.arange(height, dtype=torch.float32).view(-1, 1).expand(height, width)
    xx = torch.arange(width, dtype=torch.float32).view(1, -1).expand(height, width)
    image = 90 + 25 * torch.randn(3, height, width, generator=generator)
    masks = torch.zeros(num, height, width, dtype=torch.bool)
    labels = torch.randint(0, len(CLASSES), (num,), generator=generator)
    max_side = max(min_size + 1.0, max_frac * min(height, width))
    for i in range(num):
        h, w = uniform(min_size, max_side), uniform(min_size, max_side)
        cy, cx = uniform(h / 2, height - h / 2), uniform(w / 2, width - w / 2)
        shape = _shape_mask(int(labels[i]), yy, xx, cy, cx, h, w)
        masks[:i] &= ~shape
        masks[i] = shape
        colour = _BASE_COLOURS[labels[i]] + 20 * torch.randn(3, generator=generator)
        image = torch.where(shape, colour.view(3, 1, 1), image)
    return image.clamp(0, 255).to(torch.uint8), masks.to(torch.uint8), labels


def boxes_from_masks(masks: Tensor) -> Tensor:
    """Tight ``x1, y1, x2, y2`` boxes (``x2``/``y2`` exclusive) of ``masks [N, H, W]``; zeros if empty."""
    n, h, w = masks.shape
    masks = masks.bool()
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    ys = torch.arange(h).expand(n, h)
    xs = torch.arange(w).expand(n, w)
    big = max(h, w) + 1
    y1 = torch.where(rows, ys, big).amin(1)
    y2 = torch.where(rows, ys, -1).amax(1) + 1
    x1 = torch.where(cols, xs, big).amin(1)
    x2 = torch.where(cols, xs, -1).amax(1) + 1
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    return torch.where(rows.any(1, keepdim=True), boxes, torch.zeros_like(boxes))


def synthetic_batch(
    batch_size: int,
    canvas: tuple[int, int],
    *,
    max_instances: int,
    instance_counts: Sequence[int] | None = None,
    seed: int = 0,
) -> tuple[Tensor, GroundTruth]:
    """A padded batch: ``images [B, 3, H, W]`` uint8 and :class:`GroundTruth` with ``max_instances`` slots.

    ``instance_counts[b]`` shapes are drawn on image b (default: random in 1..max_instances).
    """
    generator = torch.Generator().manual_seed(seed)
    height, width = canvas
    if instance_counts is None:
        instance_counts = torch.randint(1, max_instances + 1, (batch_size,), generator=generator).tolist()
    if len(instance_counts) != batch_size or any(not 0 <= n <= max_instances for n in instance_counts):
        raise ValueError(f"instance_counts must hold {batch_size} values in 0..{max_instances}")
    images = torch.empty(batch_size, 3, height, width, dtype=torch.uint8)
    boxes = torch.zeros(batch_size, max_instances, 4)
    labels = torch.zeros(batch_size, max_instances, dtype=torch.int64)
    masks = torch.zeros(batch_size, max_instances, height, width, dtype=torch.uint8)
    valid = torch.zeros(batch_size, max_instances, dtype=torch.bool)
    for b, n in enumerate(instance_counts):
        image, m, lab = draw_instances(height, width, n, generator)
        images[b] = image
        nonempty = m.flatten(1).any(1)
        masks[b, :n], labels[b, :n], valid[b, :n] = m, lab, nonempty
        boxes[b, :n] = boxes_from_masks(m)
    return images, GroundTruth(boxes=boxes, labels=labels, masks=masks, valid=valid)


# ---------------------------------------------------------------------------------------------
# A COCO-layout data set of the same shapes, on disk.

CATEGORY_IDS = (1, 3, 7)
"""COCO category ids of ``CLASSES``: deliberately non-contiguous, to exercise the label mapping."""


def shape_polygon(kind: int, cy: float, cx: float, h: float, w: float, *, points: int = 32) -> list[float]:
    """The exact outline ``[x0, y0, x1, y1, ...]`` (pixel coordinates) of a shape of class ``kind``:
    rectangle corners, triangle corners (apex at the top centre) or ``points`` samples of the ellipse."""
    if kind == 0:
        xy = [
            (cx - w / 2, cy - h / 2),
            (cx + w / 2, cy - h / 2),
            (cx + w / 2, cy + h / 2),
            (cx - w / 2, cy + h / 2),
        ]
    elif kind == 1:
        t = torch.arange(points, dtype=torch.float64) * (2 * torch.pi / points)
        xy = list(zip((cx + w / 2 * t.cos()).tolist(), (cy + h / 2 * t.sin()).tolist(), strict=True))
    else:
        xy = [(cx, cy - h / 2), (cx + w / 2, cy + h / 2), (cx - w / 2, cy + h / 2)]
    return [round(float(v), 2) for p in xy for v in p]


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths (starting with zeros) of the column-major flattened mask."""
    flat = np.asfortranarray(mask).ravel(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    return {"size": list(mask.shape), "counts": counts}


def _draw_coco_image(
    height: int, width: int, num: int, rng: np.random.Generator, *, crowd: bool
) -> tuple[np.ndarray, list[dict]]:
    """Image ``[H, W, 3]`` uint8 and its annotations (without ids). Each shape's mask is its polygon
    rasterised by pycocotools; placements that would hide more than half of an earlier shape are redrawn;
    partly hidden shapes are annotated with their visible part as compressed RLE."""
    from pycocotools import mask as mask_utils

    def raster(poly: list[float]) -> np.ndarray:
        with warnings.catch_warnings():  # pycocotools' numpy-2 "copy keyword" deprecation notice
            warnings.simplefilter("ignore", DeprecationWarning)
            return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly], height, width))).astype(
                bool
            )

    image = 90 + 25 * rng.standard_normal((height, width, 3))
    colours = _BASE_COLOURS.numpy()
    anns: list[dict] = []
    crowd_mask = np.zeros((height, width), dtype=bool)
    if crowd:  # a cluster of small ellipses annotated as one iscrowd=1 region, drawn below the shapes
        cy, cx = rng.uniform(20, height - 20), rng.uniform(20, width - 20)
        for _ in range(6):
            y, x = cy + rng.uniform(-14, 14), cx + rng.uniform(-14, 14)
            crowd_mask |= raster(shape_polygon(1, y, x, rng.uniform(5, 9), rng.uniform(5, 9)))
        image[crowd_mask] = colours[1]
    shapes: list[tuple[int, list[float], np.ndarray]] = []  # (label, polygon, visible mask)
    max_side = max(17.0, 0.6 * min(height, width))
    for _ in range(num):
        for _attempt in range(10):
            label = int(rng.integers(0, len(CLASSES)))
            h, w = rng.uniform(16, max_side), rng.uniform(16, max_side)
            cy, cx = rng.uniform(h / 2, height - h / 2), rng.uniform(w / 2, width - w / 2)
            poly = shape_polygon(label, cy, cx, h, w)
            mask = raster(poly)
            if mask.sum() < 64:
                continue
            hidden = [(v & mask).sum() / max(v.sum(), 1) for _, _, v in shapes]
            if all(f <= 0.5 for f in hidden):
                break
        else:
            continue
        for _, _, visible in shapes:
            visible &= ~mask
        shapes.append((label, poly, mask.copy()))
        image[mask] = colours[label] + 20 * rng.standard_normal(3)
    for _, _, visible in shapes:
        crowd_mask &= ~visible
    for label, poly, visible in shapes:
        full = raster(poly)
        rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
        if (visible == full).all():
            segmentation: list | dict = [poly]
        else:
            segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        anns.append(
            {
                "category_id": CATEGORY_IDS[label],
                "segmentation": segmentation,
                "area": float(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": 0,
            }
        )
    if crowd_mask.any():
        rle = mask_utils.encode(np.asfortranarray(crowd_mask.astype(np.uint8)))
        anns.append(
            {
                "category_id": CATEGORY_IDS[1],
                "segmentation": _uncompressed_rle(crowd_mask),
                "area": float(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": 1,
            }
        )
    return image.clip(0, 255).astype(np.uint8), anns


def write_synthetic_coco(
    out_dir: str | Path,
    *,
    train: int,
    val: int,
    seed: int = 0,
    min_side: int = 160,
    max_side: int = 320,
    image_sizes: Sequence[tuple[int, int]] | None = None,
    instances: tuple[int, int] = (1, 6),
) -> Path:
    """Write a COCO-layout data set of shapes and return ``out_dir``.

    Layout: ``annotations/instances_{train,val}2017.json`` and ``{train,val}2017/<12-digit id>.jpg``
    (JPEG quality 95). Image sides are uniform in ``[min_side, max_side]`` (or drawn from ``image_sizes``,
    ``(h, w)`` pairs); each image holds ``instances[0]..instances[1]`` shapes, except every ninth image
    (index 4, 13, ...), which is empty. Category ids are ``CATEGORY_IDS``, image ids ``7 * k + 3`` (train)
    and ``7 * k + 5`` (val); the first non-empty val image also has one ``iscrowd=1`` region (uncompressed
    RLE). Whole shapes are polygons, partly hidden ones compressed RLE; ``area``/``bbox`` come from masks.
    """
    from PIL import Image

    out = Path(out_dir)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [
        {"id": c, "name": n, "supercategory": "shape"} for c, n in zip(CATEGORY_IDS, CLASSES, strict=True)
    ]
    for split, count, offset in (("train", train, 3), ("val", val, 5)):
        rng = np.random.default_rng([seed, offset])
        folder = out / f"{split}2017"
        folder.mkdir(exist_ok=True)
        images, annotations, crowd_done = [], [], split != "val"
        for k in range(count):
            image_id = 7 * k + offset
            if image_sizes:
                height, width = image_sizes[int(rng.integers(0, len(image_sizes)))]
            else:
                height, width = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
            num = 0 if k % 9 == 4 else int(rng.integers(instances[0], instances[1] + 1))
            pixels, anns = _draw_coco_image(height, width, num, rng, crowd=not crowd_done and num > 0)
            crowd_done = crowd_done or num > 0
            file_name = f"{image_id:012d}.jpg"
            Image.fromarray(pixels).save(folder / file_name, quality=95)
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
            for ann in anns:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
        data = {"images": images, "annotations": annotations, "categories": categories}
        (out / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))
    return out
