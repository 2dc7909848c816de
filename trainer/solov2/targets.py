"""SOLOv2 training targets with static shapes: category grids and a fixed buffer of positive pairs.

:func:`build_targets` reproduces the target assignment of mmdetection 3.x ``SOLOV2Head._get_targets_single``
without any data-dependent shape: no ``nonzero``, no boolean indexing, no host synchronisation and no
Python loop over instances (only over the ~5 FPN levels). Every output shape follows from
``(B, N, H, W)``, ``num_grids`` and ``max_positives``, so the function runs inside a graph compiled with
``torch.compile(fullgraph=True, dynamic=False)``, a CUDA graph, or on an Ascend NPU.

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
from torch import Tensor

from .structures import MASK_STRIDE, CompactGroundTruth, GroundTruth

__all__ = ["Targets", "build_targets", "compact_ground_truth", "downsample_masks", "mask_statistics"]


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


def build_targets(
    gt: GroundTruth | CompactGroundTruth,
    *,
    num_grids: Sequence[int],
    scale_ranges: Sequence[tuple[float, float]],
    pos_scale: float,
    num_classes: int,
    max_positives: int,
) -> Targets:
    """Assign SOLOv2 category and mask targets with static shapes.

    Args:
        gt: padded ground truth, full form (``gt.masks`` ``[B, N, H, W]`` uint8/bool at the canvas
            size) or compact form (masks at stride 4 with centres and counts, see
            :class:`~solov2.structures.GroundTruth`); boxes ``[B, N, 4]`` ``x1, y1, x2, y2`` in canvas pixels.
        num_grids: ``S_l`` per level.
        scale_ranges: ``(lower, upper)`` of ``sqrt(box area)`` per level (inclusive, may overlap).
        pos_scale: fraction of the box size that defines the centre box.
        num_classes: foreground classes; also the background label.
        max_positives: ``P``, the size of the (instance, cell) pair buffer per image.

    Returns:
        :class:`Targets` with ``labels``/``pos_cells`` ``[B, M]`` and pair buffers ``[B, P]``.
    """
    if len(num_grids) != len(scale_ranges):
        raise ValueError(f"num_grids has {len(num_grids)} levels but scale_ranges has {len(scale_ranges)}")
    if max_positives < 1:
        raise ValueError(f"max_positives must be at least 1, got {max_positives}")
    boxes, gt_labels, masks, valid = gt[:4]
    batch, num_inst = gt_labels.shape
    device = masks.device
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

    offsets = torch.arange(-1, 2, device=device)  # the 3 x 3 window around the centre cell
    inst_rank = torch.arange(1, num_inst + 1, device=device).view(1, num_inst, 1, 1)
    level_labels: list[Tensor] = []
    level_pos: list[Tensor] = []
    level_cells: list[Tensor] = []
    level_keep: list[Tensor] = []
    cell_offset = 0
    for num_grid, (lower, upper) in zip(num_grids, scale_ranges, strict=True):
        hit = usable & (sqrt_area >= lower) & (sqrt_area <= upper)  # [B, N]
        coord_h = _trunc_cells(center_h / height, num_grid).long()
        coord_w = _trunc_cells(center_w / width, num_grid).long()
        top_box = _trunc_cells((center_h - pos_h) / height, num_grid).clamp(min=0).long()
        down_box = _trunc_cells((center_h + pos_h) / height, num_grid).clamp(max=num_grid - 1).long()
        left_box = _trunc_cells((center_w - pos_w) / width, num_grid).clamp(min=0).long()
        right_box = _trunc_cells((center_w + pos_w) / width, num_grid).clamp(max=num_grid - 1).long()
        top = torch.maximum(top_box, coord_h - 1)
        down = torch.minimum(down_box, coord_h + 1)
        left = torch.maximum(coord_w - 1, left_box)
        right = torch.minimum(right_box, coord_w + 1)

        # Category grid: for every cell the highest instance rank (n + 1) covering it, 0 if none.
        grid = torch.arange(num_grid, device=device)
        in_rows = (grid >= top[..., None]) & (grid <= down[..., None]) & hit[..., None]  # [B, N, S]
        in_cols = (grid >= left[..., None]) & (grid <= right[..., None])  # [B, N, S]
        covers = in_rows[..., :, None] & in_cols[..., None, :]  # [B, N, S, S]
        winner = (covers * inst_rank).amax(dim=1).flatten(1)  # [B, S*S]
        winner_label = torch.gather(gt_labels, 1, (winner - 1).clamp(min=0))
        level_labels.append(torch.where(winner > 0, winner_label, torch.full_like(winner_label, num_classes)))
        level_pos.append(winner > 0)

        # Candidate pairs: the 3 x 3 window, kept where it lies inside [top, down] x [left, right].
        rows = coord_h[..., None] + offsets  # [B, N, 3]
        cols = coord_w[..., None] + offsets
        row_ok = (rows >= top[..., None]) & (rows <= down[..., None]) & hit[..., None]
        col_ok = (cols >= left[..., None]) & (cols <= right[..., None])
        keep = (row_ok[..., :, None] & col_ok[..., None, :]).flatten(2)  # [B, N, 9]
        cell = (rows[..., :, None] * num_grid + cols[..., None, :]).flatten(2) + cell_offset
        level_cells.append(torch.where(keep, cell, torch.zeros_like(cell)).flatten(1))  # [B, N*9]
        level_keep.append(keep.flatten(1))
        cell_offset += num_grid * num_grid

    labels = torch.cat(level_labels, dim=1)  # [B, M]
    pos_cells = torch.cat(level_pos, dim=1)  # [B, M]
    cand_cell = torch.cat(level_cells, dim=1)  # [B, L*N*9], level-major, instance, window position
    cand_keep = torch.cat(level_keep, dim=1)
    cand_inst = torch.arange(num_inst, device=device).view(1, 1, num_inst, 1)
    cand_inst = cand_inst.expand(batch, len(num_grids), num_inst, 9).reshape(batch, -1)

    # Compact the kept candidates into P slots; slot P swallows the unkept ones and the overflow.
    position = torch.cumsum(cand_keep.long(), dim=1) - 1
    slot = torch.where(
        cand_keep & (position < max_positives), position, torch.full_like(position, max_positives)
    )
    buffer = torch.zeros(batch, max_positives + 1, dtype=torch.int64, device=device)
    pair_cell = buffer.scatter(1, slot, cand_cell)[:, :max_positives]
    pair_instance = buffer.scatter(1, slot, torch.where(cand_keep, cand_inst, 0))[:, :max_positives]
    total = cand_keep.sum(dim=1)  # [B]
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
