"""SOLOv2 training targets with static shapes: category grids and a fixed buffer of positive pairs.

:func:`build_targets` reproduces the target assignment of mmdetection 3.x ``SOLOV2Head._get_targets_single``
without any data-dependent shape: no ``nonzero``, no boolean indexing, no host synchronisation and no
Python loop over instances or levels (all levels are handled at once, on ``max(S) x max(S)`` grids;
only the division by each level's cell size, done with a Python float as mmdetection does, is one
operation per level). Every output shape follows from ``(B, N, H, W)``, ``num_grids`` and
``max_positives``, so the function runs inside a graph compiled with
``torch.compile(fullgraph=True, dynamic=False)``, a CUDA graph, or on an Ascend NPU. In eager mode it
launches about 80 operations for any number of levels (about 70 per level before), which matters when
the host's launches bound the step, as they do at small batches on GPUs and NPUs.

Assignment rules, per image and per level ``l`` with an ``S x S`` grid over the ``H x W`` canvas:

- instance ``n`` is usable iff ``gt.valid[n]`` and its mask has a pixel; it is assigned to every level
  whose ``scale_ranges[l] = (lower, upper)`` contains ``sqrt(box_w * box_h)`` (bounds inclusive);
- the centre cell ``(coord_h, coord_w)`` holds the mask's centre of mass; the positive cells are the
  cells of the centre box (``pos_scale / 2`` of the box size around the centre of mass) that lie
  within one cell of the centre cell, i.e. at most a 3 x 3 window;
- a cell's category is the label of the last (highest index) usable instance covering it, else
  ``num_classes`` (background);
- every (instance, cell) pair is one mask target: the instance's mask at stride 4.

The float32 arithmetic (centre of mass from exact integer sums, ``torch.div(..., 1.0 / S,
rounding_mode="trunc")``) uses the same operations in the same order as mmdetection, so results match
it bit for bit on the same device in eager mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .structures import MASK_STRIDE, CompactGroundTruth, GroundTruth

__all__ = [
    "LevelGeometry",
    "Targets",
    "build_targets",
    "compact_ground_truth",
    "downsample_masks",
    "mask_statistics",
]


class Targets(NamedTuple):
    """Static-shape SOLOv2 targets of a batch; ``M = sum_l S_l ** 2`` cells, ``P = max_positives``.

    - ``labels``:        ``[B, M]`` int64 category of each cell, ``num_classes`` for background. Levels are
      concatenated; within a level, cell ``(i, j)`` has index ``i * S + j``.
    - ``pos_cells``:     ``[B, M]`` bool, the distinct positive cells.
    - ``pair_cell``:     ``[B, P]`` int64 cell index (into ``M``) of each (instance, cell) pair; 0 if unused.
    - ``pair_instance``: ``[B, P]`` int64 instance index (into ``N``) of each pair; 0 if unused.
    - ``pair_valid``:    ``[B, P]`` bool, True for the used slots (always a prefix of the buffer).
    - ``num_dropped``:   ``[B]`` int64, pairs that did not fit in ``P`` (counted, never silent).

    Pairs are stored level-major, then by instance index, then by position in the 3 x 3 window
    (row-major); pairs beyond ``P`` in that order are the dropped ones.
    """

    labels: Tensor
    pos_cells: Tensor
    pair_cell: Tensor
    pair_instance: Tensor
    pair_valid: Tensor
    num_dropped: Tensor


def _trunc_cells(x: Tensor, num_grid: int) -> Tensor:
    """``trunc(x / (1.0 / S))`` in ``x``'s dtype, with the float ``1.0 / S`` as divisor (as mmdetection)."""
    return torch.div(x, 1.0 / num_grid, rounding_mode="trunc")


def _largest_divisor(n: int, limit: int) -> int:
    """The largest divisor of ``n`` that is at most ``limit``."""
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _row_col_counts(masks: Tensor) -> tuple[Tensor, Tensor]:
    """Pixels per row ``[..., H]`` and per column ``[..., W]`` (int64) of 0/1 masks ``[..., H, W]``.

    Summing bytes one by one into int64 is slow on CPUs, so when ``W % 8 == 0`` the masks are read as
    int64 words of 8 pixels and the words are added: as long as fewer than 256 words are added, no
    byte lane carries into the next, so viewing the sums as bytes again gives per-column partial
    counts (independent of endianness). Exact, and several times less memory traffic.
    """
    height, width = masks.shape[-2:]
    lead = masks.shape[:-2]
    # Inductor may lay the buffer out so that the dtype view is refused: compiled graphs add bytes.
    if width % 8 or torch.compiler.is_compiling():
        return masks.sum(dim=-1, dtype=torch.int64), masks.sum(dim=-2, dtype=torch.int64)
    words = masks.contiguous().view(torch.int64)  # [..., H, W/8]
    per_row = width // 8
    chunk = _largest_divisor(per_row, 255)
    lanes = words.reshape(*lead, height, per_row // chunk, chunk).sum(dim=-1)  # [..., H, W/8/chunk]
    rows = lanes.view(torch.uint8).reshape(*lead, height, -1).sum(dim=-1, dtype=torch.int64)
    block = _largest_divisor(height, 255)
    lanes = words.reshape(*lead, height // block, block, per_row).sum(dim=-2)  # [..., H/block, W/8]
    cols = lanes.view(torch.uint8).reshape(*lead, height // block, width).sum(dim=-2, dtype=torch.int64)
    return rows, cols


def _centre_of_mass(masks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Centre of mass of 0/1 masks ``[B, N, H, W]``: ``(center_h, center_w)`` float32 ``[B, N]``, pixel count.

    The weighted sums are exact int64 sums converted to float32 and divided by
    ``max(count, 1e-6)``, the same operations as mmdetection's ``center_of_mass``.
    """
    height, width = masks.shape[-2:]
    rows, cols = _row_col_counts(masks)  # [B, N, H], [B, N, W]
    count = rows.sum(dim=-1)  # [B, N]
    grid_h = torch.arange(height, device=masks.device, dtype=torch.int64)
    grid_w = torch.arange(width, device=masks.device, dtype=torch.int64)
    normalizer = count.float().clamp(min=1e-6)
    center_h = (rows * grid_h).sum(dim=-1).float() / normalizer
    center_w = (cols * grid_w).sum(dim=-1).float() / normalizer
    return center_h, center_w, count


def mask_statistics(masks: Tensor, stride: int = MASK_STRIDE) -> tuple[Tensor, Tensor, Tensor]:
    """What target assignment needs of 0/1 masks ``[..., H, W]``, computed at their resolution.

    Returns ``(masks at stride [..., H/s, W/s], centres [..., 2] float32 (h, w), counts [...] int64)``.
    ``H`` and ``W`` must be multiples of ``stride`` (pad with zeros at the bottom and right first:
    padding changes neither the centre of mass, nor the count, nor the downsampled content).
    """
    lead = masks.shape[:-2]
    if masks.numel() == 0:
        small = downsample_masks(masks, stride)
        return small, torch.zeros(*lead, 2, device=masks.device), torch.zeros(lead, dtype=torch.int64)
    flat = masks.reshape(1, -1, *masks.shape[-2:])
    center_h, center_w, count = _centre_of_mass(flat)
    centres = torch.stack([center_h, center_w], dim=-1).reshape(*lead, 2)
    return downsample_masks(masks, stride), centres, count.reshape(lead)


def compact_ground_truth(gt: GroundTruth) -> CompactGroundTruth:
    """The compact form of full-resolution ground truth: masks at stride 4 plus each instance's centre
    of mass and pixel count at the canvas resolution. :func:`build_targets` gives the same targets for both."""
    small, centres, counts = mask_statistics(gt.masks)
    return CompactGroundTruth(gt.boxes, gt.labels, small, gt.valid, centres, counts)


class LevelGeometry(nn.Module):
    """The head's per-level constants that target assignment needs on the device, as buffers.

    A tensor made from Python values inside a step would be a host-to-device copy on every call (and a
    synchronisation on CUDA); as buffers they move with the model. Not persistent: checkpoints do not
    hold them. ``L`` levels, ``G = max(num_grids)``; levels are laid out on ``G x G`` grids, of which
    level ``l`` uses the top-left ``S_l x S_l`` cells.

    - ``grid``:   ``[L]`` int64 ``S_l``; ``last``: ``[L]`` int64 ``S_l - 1``.
    - ``offset``: ``[L]`` int64 index of level ``l``'s first cell among the ``M`` cells.
    - ``lower``, ``upper``: ``[L]`` float32 scale range of each level (a Python float compared with a
      float32 tensor is rounded to float32 first, so these compare alike).
    - ``cells``:  ``[M]`` int64 position of each of the ``M`` cells (level-major, row-major) in ``[L, G, G]``.
    - ``steps``:  ``[G]`` int64 ``0..G-1``; ``window``: ``[3]`` int64 ``-1, 0, 1``.
    """

    def __init__(self, num_grids: Sequence[int], scale_ranges: Sequence[tuple[float, float]]) -> None:
        super().__init__()
        if len(num_grids) != len(scale_ranges):
            raise ValueError(
                f"num_grids has {len(num_grids)} levels but scale_ranges has {len(scale_ranges)}"
            )
        self.num_grids = tuple(int(s) for s in num_grids)
        self.scale_ranges = tuple((float(lo), float(hi)) for lo, hi in scale_ranges)
        side = max(self.num_grids)
        offsets = [sum(s * s for s in self.num_grids[:level]) for level in range(len(self.num_grids))]
        cells = [
            (level * side + i) * side + j
            for level, s in enumerate(self.num_grids)
            for i in range(s)
            for j in range(s)
        ]
        buffers = {
            "grid": torch.tensor(self.num_grids),
            "last": torch.tensor(self.num_grids) - 1,
            "offset": torch.tensor(offsets),
            "lower": torch.tensor([lo for lo, _ in self.scale_ranges], dtype=torch.float32),
            "upper": torch.tensor([hi for _, hi in self.scale_ranges], dtype=torch.float32),
            "cells": torch.tensor(cells),
            "steps": torch.arange(side),
            "window": torch.arange(-1, 2),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)

    grid: Tensor
    last: Tensor
    offset: Tensor
    lower: Tensor
    upper: Tensor
    cells: Tensor
    steps: Tensor
    window: Tensor


def build_targets(
    gt: GroundTruth | CompactGroundTruth,
    *,
    num_grids: Sequence[int],
    scale_ranges: Sequence[tuple[float, float]],
    pos_scale: float,
    num_classes: int,
    max_positives: int,
    geometry: LevelGeometry | None = None,
) -> Targets:
    """Assign SOLOv2 category and mask targets with static shapes, all levels at once.

    Args:
        gt: padded ground truth, full form (``gt.masks`` ``[B, N, H, W]`` uint8/bool at the canvas
            size) or compact form (masks at stride 4 with centres and counts, see
            :class:`~solov2.structures.GroundTruth`); boxes ``[B, N, 4]`` ``x1, y1, x2, y2`` in canvas pixels.
        num_grids: ``S_l`` per level.
        scale_ranges: ``(lower, upper)`` of ``sqrt(box area)`` per level (inclusive, may overlap).
        pos_scale: fraction of the box size that defines the centre box.
        num_classes: foreground classes; also the background label.
        max_positives: ``P``, the size of the (instance, cell) pair buffer per image.
        geometry: the same levels as device buffers (the model's ``target_geometry``); made here
            when not given, which copies a few small tensors to the device.

    Returns:
        :class:`Targets` with ``labels``/``pos_cells`` ``[B, M]`` and pair buffers ``[B, P]``.
    """
    if max_positives < 1:
        raise ValueError(f"max_positives must be at least 1, got {max_positives}")
    boxes, gt_labels, masks, valid = gt[:4]
    batch, num_inst = gt_labels.shape
    device = masks.device
    if geometry is None:
        geometry = LevelGeometry(num_grids, scale_ranges).to(device)
    elif geometry.num_grids != tuple(num_grids) or geometry.scale_ranges != tuple(map(tuple, scale_ranges)):
        raise ValueError(
            f"geometry is for num_grids {geometry.num_grids} and scale_ranges {geometry.scale_ranges}, "
            f"not {tuple(num_grids)} and {tuple(map(tuple, scale_ranges))}"
        )
    if isinstance(gt, CompactGroundTruth):
        height, width = gt.canvas_size
        center_h, center_w, count = gt.centers[..., 0], gt.centers[..., 1], gt.counts
    else:
        height, width = masks.shape[-2:]
        center_h, center_w, count = _centre_of_mass(masks)
    usable = valid & (count > 0)  # [B, N]
    boxes = boxes.float()
    box_w = boxes[..., 2] - boxes[..., 0]
    box_h = boxes[..., 3] - boxes[..., 1]
    sqrt_area = torch.sqrt(box_w * box_h)
    pos_w = 0.5 * box_w * pos_scale
    pos_h = 0.5 * box_h * pos_scale
    # Per level l: [B, L, N] usable instances in its scale range, and the cells (rounded down) of the
    # centre of mass (h, w) and of the centre box's top, bottom, left and right edges: [B, L, 6, N].
    per_level = (1, len(num_grids), 1)
    hit = usable[:, None] & (sqrt_area[:, None] >= geometry.lower.view(per_level))
    hit = hit & (sqrt_area[:, None] <= geometry.upper.view(per_level))
    fractions = torch.stack(
        [
            center_h / height,
            center_w / width,
            (center_h - pos_h) / height,
            (center_h + pos_h) / height,
            (center_w - pos_w) / width,
            (center_w + pos_w) / width,
        ],
        dim=1,
    )  # [B, 6, N]
    cells = torch.stack([_trunc_cells(fractions, s) for s in num_grids], dim=1).long()
    centre = cells[:, :, :2]  # [B, L, 2, N]: (coord_h, coord_w)
    last = geometry.last.view(1, -1, 1, 1)
    # The positive region per level: the centre box, clipped to the grid and to one cell around the
    # centre cell; ``start`` holds (top, left) and ``end`` (down, right), [B, L, 2, N].
    start = torch.maximum(cells[:, :, 2::2].clamp(min=0), centre - 1)
    end = torch.minimum(torch.minimum(cells[:, :, 3::2], last), centre + 1)

    # Category grid: for every cell the highest instance rank (n + 1) covering it, 0 if none. Rows and
    # columns beyond S_l are never inside [start, end], so the G x G layout needs no mask.
    inside = (geometry.steps >= start[..., None]) & (geometry.steps <= end[..., None])  # [B, L, 2, N, G]
    covers = (inside[:, :, 0] & hit[..., None])[..., :, None] & inside[:, :, 1, :, None, :]  # [B, L, N, G, G]
    inst_rank = torch.arange(1, num_inst + 1, device=device).view(1, 1, num_inst, 1, 1)
    winner = (covers * inst_rank).amax(dim=2).flatten(1).index_select(1, geometry.cells)  # [B, M]
    pos_cells = winner > 0
    winner_label = torch.gather(gt_labels, 1, (winner - 1).clamp(min=0))
    labels = torch.where(pos_cells, winner_label, num_classes)

    # Candidate pairs: the 3 x 3 window around the centre cell, kept where it lies inside [start, end]
    # (rows and columns: [B, L, 2, N, 3]); level-major, then instance, then window position.
    window = centre[..., None] + geometry.window
    ok = (window >= start[..., None]) & (window <= end[..., None])
    keep = ((ok[:, :, 0] & hit[..., None])[..., :, None] & ok[:, :, 1, :, None, :]).flatten(1)
    cand_cell = window[:, :, 0, :, :, None] * geometry.grid.view(1, -1, 1, 1, 1) + window[:, :, 1, :, None, :]
    cand_cell = (cand_cell + geometry.offset.view(1, -1, 1, 1, 1)).flatten(1)  # [B, L*N*9]
    cand_inst = torch.arange(num_inst, device=device).view(1, 1, num_inst, 1)
    cand_inst = cand_inst.expand(batch, len(num_grids), num_inst, 9).reshape(batch, -1)

    # Compact the kept candidates into P slots; slot P swallows the unkept ones and the overflow.
    position = torch.cumsum(keep, dim=1) - 1
    slot = torch.where(keep & (position < max_positives), position, max_positives)
    buffer = torch.zeros(batch, max_positives + 1, dtype=torch.int64, device=device)
    pair_cell = buffer.scatter(1, slot, cand_cell)[:, :max_positives]
    pair_instance = buffer.scatter(1, slot, cand_inst)[:, :max_positives]
    total = position[:, -1] + 1  # [B]
    pair_valid = torch.arange(max_positives, device=device) < total[:, None]
    num_dropped = (total - max_positives).clamp(min=0)
    return Targets(labels, pos_cells, pair_cell, pair_instance, pair_valid, num_dropped)


def downsample_masks(masks: Tensor, stride: int = 4) -> Tensor:
    """Downsample binary masks ``[..., H, W]`` to ``[..., H / stride, W / stride]`` (same dtype).

    Reproduces ``cv2.resize(mask, (W / s, H / s), interpolation=cv2.INTER_LINEAR)`` on uint8 0/1
    masks (what mmdetection's ``mmcv.imrescale(mask, 1 / s)`` does) exactly, in integers: output pixel
    ``(d, e)`` samples source rows and columns ``s*d + s/2 - 1`` and ``s*d + s/2`` with weight 1/4 each and
    rounds half up, i.e. it is 1 iff at least two of those four pixels are set. Masks must hold 0/1.

    Raises:
        ValueError: if ``stride`` is not a positive even number or does not divide ``H`` and ``W``.
    """
    if stride < 2 or stride % 2:
        raise ValueError(f"stride must be a positive even number, got {stride}")
    height, width = masks.shape[-2:]
    if height % stride or width % stride:
        raise ValueError(f"mask size {height}x{width} is not a multiple of the stride {stride}")
    lead = masks.shape[:-2]
    half = stride // 2
    word = {2: torch.int16, 4: torch.int32, 8: torch.int64}.get(stride)
    if word is not None and not torch.compiler.is_compiling():  # see _row_col_counts
        # Read each block row as one word of ``stride`` pixels; add the two sampled rows word-wise
        # (byte lanes stay <= 2, no carry), then add the two sampled bytes of each word.
        rows = masks.contiguous().view(word).reshape(*lead, height // stride, stride, width // stride)
        lanes = (rows[..., half - 1, :] + rows[..., half, :]).view(torch.uint8)
        lanes = lanes.reshape(*lead, height // stride, width // stride, stride)
        out = (lanes[..., half - 1] + lanes[..., half]) >= 2
    else:
        blocks = masks.reshape(*lead, height // stride, stride, width // stride, stride)
        taps = blocks[..., half - 1 : half + 1, :, half - 1 : half + 1]  # [..., h, 2, w, 2]
        out = taps.sum(dim=(-3, -1), dtype=torch.int32) >= 2
    return out if masks.dtype == torch.bool else out.to(masks.dtype)
