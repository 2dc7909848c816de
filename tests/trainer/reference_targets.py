"""Slow, literal reference of the SOLOv2 target rules: plain Python loops, one instance at a time.

This is the oracle for :mod:`solov2.targets`. It follows the rules image by image, level by level and
instance by instance, with the per-instance float32 arithmetic done on 0-dim float32 tensors (the same
operations, in the same order, as mmdetection 3.x ``SOLOV2Head._get_targets_single``), and Python
ints and sets for everything else. Its mask downsampling uses ``F.interpolate`` (bilinear,
``align_corners=False``) and a 0.5 threshold, independently of :func:`solov2.targets.downsample_masks`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class LevelTargets:
    """Targets of one image at one level (cells are level-local: ``i * S + j``)."""

    labels: Tensor  # [S, S] int64
    pos_cells: set[int] = field(default_factory=set)
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (cell, instance) in assignment order
    mask_targets: list[Tensor] = field(default_factory=list)  # [h, w] uint8 per pair, if requested


def reference_downsample(mask: Tensor, stride: int = 4) -> Tensor:
    """``[H, W]`` 0/1 mask -> ``[H / stride, W / stride]`` uint8 via bilinear interpolation and >= 0.5."""
    h, w = mask.shape[-2] // stride, mask.shape[-1] // stride
    small = F.interpolate(mask.float()[None, None], size=(h, w), mode="bilinear", align_corners=False)
    return (small[0, 0] >= 0.5).to(torch.uint8)


def _cells(value: Tensor, num_grid: int) -> int:
    """Python int of ``trunc(value / (1.0 / S))`` computed on a float32 0-dim tensor."""
    return int(torch.div(value, 1.0 / num_grid, rounding_mode="trunc"))


def reference_image_targets(
    boxes: Tensor,
    labels: Tensor,
    masks: Tensor,
    valid: Tensor,
    *,
    num_grids: Sequence[int],
    scale_ranges: Sequence[tuple[float, float]],
    pos_scale: float,
    num_classes: int,
    with_masks: bool = False,
) -> list[LevelTargets]:
    """Targets of one image: ``boxes [N, 4]``, ``labels [N]``, ``masks [N, H, W]``, ``valid [N]``."""
    height, width = masks.shape[-2:]
    out = []
    for num_grid, (lower, upper) in zip(num_grids, scale_ranges, strict=True):
        level = LevelTargets(labels=torch.full((num_grid, num_grid), num_classes, dtype=torch.int64))
        for n in range(masks.shape[0]):
            if not bool(valid[n]):
                continue
            mask = masks[n].to(torch.bool)
            pixels = int(mask.sum())
            if pixels == 0:
                continue
            box = boxes[n].float()
            box_w = box[2] - box[0]
            box_h = box[3] - box[1]
            sqrt_area = torch.sqrt(box_w * box_h)
            if not (bool(sqrt_area >= lower) and bool(sqrt_area <= upper)):
                continue

            # Centre of mass: exact integer sums, converted to float32, divided by max(count, 1e-6).
            rows = torch.arange(height)[:, None]
            cols = torch.arange(width)[None, :]
            normalizer = torch.tensor(float(pixels), dtype=torch.float32).clamp(min=1e-6)
            center_h = torch.tensor(int((mask * rows).sum()), dtype=torch.int64).float() / normalizer
            center_w = torch.tensor(int((mask * cols).sum()), dtype=torch.int64).float() / normalizer

            pos_w = 0.5 * box_w * pos_scale
            pos_h = 0.5 * box_h * pos_scale
            coord_h = _cells(center_h / height, num_grid)
            coord_w = _cells(center_w / width, num_grid)
            top_box = max(0, _cells((center_h - pos_h) / height, num_grid))
            down_box = min(num_grid - 1, _cells((center_h + pos_h) / height, num_grid))
            left_box = max(0, _cells((center_w - pos_w) / width, num_grid))
            right_box = min(num_grid - 1, _cells((center_w + pos_w) / width, num_grid))
            top = max(top_box, coord_h - 1)
            down = min(down_box, coord_h + 1)
            left = max(coord_w - 1, left_box)
            right = min(right_box, coord_w + 1)

            small = reference_downsample(masks[n]) if with_masks else None
            for i in range(top, down + 1):
                for j in range(left, right + 1):
                    cell = i * num_grid + j
                    level.labels[i, j] = int(labels[n])
                    level.pos_cells.add(cell)
                    level.pairs.append((cell, n))
                    if small is not None:
                        level.mask_targets.append(small)
        out.append(level)
    return out


def reference_targets(
    boxes: Tensor,
    labels: Tensor,
    masks: Tensor,
    valid: Tensor,
    *,
    num_grids: Sequence[int],
    scale_ranges: Sequence[tuple[float, float]],
    pos_scale: float,
    num_classes: int,
    with_masks: bool = False,
) -> list[list[LevelTargets]]:
    """Per image (``[B, N, ...]`` inputs), per level: :class:`LevelTargets`."""
    return [
        reference_image_targets(
            boxes[b],
            labels[b],
            masks[b],
            valid[b],
            num_grids=num_grids,
            scale_ranges=scale_ranges,
            pos_scale=pos_scale,
            num_classes=num_classes,
            with_masks=with_masks,
        )
        for b in range(boxes.shape[0])
    ]


def flatten_levels(
    levels: list[LevelTargets], num_grids: Sequence[int]
) -> tuple[Tensor, list[tuple[int, int]]]:
    """Concatenate one image's levels: labels ``[M]`` and (global cell, instance) pairs in order."""
    flat_labels = []
    pairs = []
    offset = 0
    for level, num_grid in zip(levels, num_grids, strict=True):
        flat_labels.append(level.labels.flatten())
        pairs.extend((offset + cell, n) for cell, n in level.pairs)
        offset += num_grid * num_grid
    return torch.cat(flat_labels), pairs


# ---------------------------------------------------------------------------------------------
# Random ground truth for the comparisons: many hard cases on purpose.


def random_ground_truth(
    generator: torch.Generator,
    *,
    batch: int,
    max_instances: int,
    canvas: tuple[int, int],
    num_classes: int,
    boundary_sizes: Sequence[float] = (),
    num_grids: Sequence[int] = (),
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(boxes [B, N, 4], labels [B, N], masks [B, N, H, W] uint8, valid [B, N])`` with hard cases.

    Mixes rectangles, ellipses, sparse pixel sets, single pixels, whole-canvas masks, masks touching
    borders and corners, nested instances sharing a centre, centres on cell boundaries of the given
    ``num_grids``, boxes whose ``sqrt(area)`` equals one of ``boundary_sizes``, valid instances with an
    empty mask, invalid padding entries that still carry a mask, and images without instances.
    """
    height, width = canvas

    def rand(high: int, low: int = 0) -> int:
        return int(torch.randint(low, max(high, low + 1), (1,), generator=generator))

    boxes = torch.zeros(batch, max_instances, 4)
    labels = torch.zeros(batch, max_instances, dtype=torch.int64)
    masks = torch.zeros(batch, max_instances, height, width, dtype=torch.uint8)
    valid = torch.zeros(batch, max_instances, dtype=torch.bool)
    ys = torch.arange(height)[:, None].float()
    xs = torch.arange(width)[None, :].float()
    for b in range(batch):
        count = 0 if rand(8) == 0 else rand(max_instances + 1)
        for n in range(max_instances):
            kind = rand(12)
            y1, x1 = rand(height), rand(width)
            y2, x2 = rand(height + 1, y1 + 1), rand(width + 1, x1 + 1)
            if kind == 0:  # single pixel
                y2, x2 = y1 + 1, x1 + 1
            elif kind == 1:  # whole canvas
                y1, x1, y2, x2 = 0, 0, height, width
            elif kind == 2:  # touching a corner
                y1, x1 = (0 if rand(2) else y1), (0 if rand(2) else x1)
                y2, x2 = (height if rand(2) else y2), (width if rand(2) else x2)
            elif kind == 3 and n > 0 and bool(masks[b, n - 1].any()):  # nested in the previous one
                prev_rows = masks[b, n - 1].any(1).nonzero()[:, 0]
                prev_cols = masks[b, n - 1].any(0).nonzero()[:, 0]
                py1, py2 = int(prev_rows[0]), int(prev_rows[-1])
                px1, px2 = int(prev_cols[0]), int(prev_cols[-1])
                dy, dx = rand((py2 - py1) // 2 + 1), rand((px2 - px1) // 2 + 1)
                y1, x1, y2, x2 = py1 + dy, px1 + dx, py2 - dy + 1, px2 - dx + 1
            elif kind == 4 and num_grids:  # centre of mass on a cell boundary
                grid = num_grids[rand(len(num_grids))]
                cy = round(height * rand(grid) / grid)
                cx = round(width * rand(grid) / grid)
                ry, rx = rand(min(cy, height - 1 - cy) + 1), rand(min(cx, width - 1 - cx) + 1)
                y1, x1, y2, x2 = cy - ry, cx - rx, cy + ry + 1, cx + rx + 1
            mask = torch.zeros(height, width, dtype=torch.uint8)
            if kind == 5:  # ellipse inside the box
                cy, cx = (y1 + y2 - 1) / 2, (x1 + x2 - 1) / 2
                ry, rx = max((y2 - y1) / 2, 0.5), max((x2 - x1) / 2, 0.5)
                mask = (((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1).to(torch.uint8)
            elif kind == 6:  # sparse random pixels inside the box
                mask[y1:y2, x1:x2] = (torch.rand(y2 - y1, x2 - x1, generator=generator) < 0.3).to(torch.uint8)
            elif kind != 7:  # kind 7: empty mask
                mask[y1:y2, x1:x2] = 1
            box = torch.tensor([x1, y1, x2, y2], dtype=torch.float32)
            if mask.any() and rand(2):  # the box is the mask's tight box, else the drawn box
                rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
                box = torch.tensor([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=torch.float32)
            if boundary_sizes and rand(4) == 0:  # sqrt(area) exactly on a scale-range bound
                side = float(boundary_sizes[rand(len(boundary_sizes))])
                bx1 = min(float(box[0]), max(width - side, 0.0))
                by1 = min(float(box[1]), max(height - side, 0.0))
                box = torch.tensor([bx1, by1, bx1 + side, by1 + side])
            boxes[b, n] = box
            labels[b, n] = rand(num_classes)
            masks[b, n] = mask
            valid[b, n] = n < count
        if count and rand(4) == 0:  # valid entries need not be a prefix
            perm = torch.randperm(max_instances, generator=generator)
            boxes[b], labels[b], masks[b], valid[b] = (
                boxes[b, perm],
                labels[b, perm],
                masks[b, perm],
                valid[b, perm],
            )
    return boxes, labels, masks, valid
