"""Generated images of simple shapes with instance masks: data for demos, tests and benchmarks.

Each instance is a filled rectangle, ellipse or triangle (its class) in a class-tinted colour on a
noisy background; later shapes occlude earlier ones, so masks are the visible parts, as in COCO.
Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence

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
