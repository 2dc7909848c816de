"""SOLOv2 inference post-processing with static tensor shapes, plus host-side helpers for evaluation.

:func:`predict` turns the head outputs of a batch into a fixed number of detection slots per image
(:class:`~solov2.structures.Detections`), with no data-dependent shapes and no host synchronisation,
so it runs inside ``torch.compile(fullgraph=True, dynamic=False)``, a CUDA graph or an Ascend graph, and
exports to ONNX (``solov2 export``): candidates are ranked by :func:`stable_descending_order`, not by a
stable ``sort``, which ONNX lacks.
Instead of removing candidates, every stage keeps fixed-size buffers and a ``valid`` mask.

It follows mmdetection 3.x ``SOLOV2Head`` inference (point NMS, score threshold, dynamic convolution,
area filter, maskness re-scoring, Matrix NMS, ``update_thr`` filter, ``max_per_img``), with one
deliberate deviation: the reference keeps *every* (cell, class) pair above ``score_thr`` and applies
``nms_pre`` only after maskness re-scoring, whereas here the ``nms_pre`` highest category scores are
taken first (a fixed-size ``topk``) and ``score_thr`` is applied as a mask on them. Both agree whenever
at most ``nms_pre`` pairs pass ``score_thr``; otherwise this version may drop a pair whose category
score ranks below ``nms_pre`` but whose maskness would have lifted it into the reference's top set.

Matrix NMS guard: with the linear kernel, a candidate whose mask duplicates a higher-scored one of
its class has compensation IoU 1 and the reference divides by ``1 - 1 = 0`` (NaN when the numerator
is 0 too). Here that denominator is clamped to ``1e-6``: such a row then decays a column it fully
overlaps to 0 (which the higher duplicate already does) and leaves the other columns alone (a huge
ratio, as the reference's ``+inf``), so the decayed scores equal the reference's wherever those are
finite and are never NaN.

:func:`paste_masks`, :func:`encode_rle` and :func:`masks_to_boxes_xywh` prepare one image's
detections for COCO evaluation; their output size depends on the image's metadata.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.nn.functional as F
from torch import Tensor

from solov2.config import InferenceConfig
from solov2.structures import Detections

__all__ = [
    "encode_rle",
    "encode_rle_by_runs",
    "masks_to_boxes_xywh",
    "matrix_nms",
    "paste_masks",
    "points_nms",
    "predict",
    "run_starts",
    "stable_descending_order",
]

MASK_STRIDE = 4
"""Stride of the mask features (P2) relative to the canvas."""
_EPS = 1e-6


def points_nms(scores: Tensor) -> Tensor:
    """Keep a grid cell only where it is the maximum of its 2x2 window (itself, up, left, up-left).

    Args:
        scores: ``[B, C, S, S]`` category probabilities.

    Returns:
        ``[B, C, S, S]``: ``scores`` with non-maximal cells set to 0 (ties are all kept).
    """
    local_max = F.max_pool2d(scores, kernel_size=2, stride=1, padding=1)[..., :-1, :-1]
    return scores * (local_max == scores)


def matrix_nms(
    masks: Tensor,
    labels: Tensor,
    scores: Tensor,
    areas: Tensor,
    valid: Tensor,
    *,
    kernel: str,
    sigma: float,
) -> Tensor:
    """Matrix NMS (SOLOv2) on a batch of fixed-size, score-sorted candidate sets.

    A candidate is decayed by every higher-ranked candidate of the same class, in proportion to their
    mask IoU, compensated by how much that higher candidate was itself overlapped from above.

    Args:
        masks: ``[B, T, K]`` binary (0/1) masks, flattened.
        labels: ``[B, T]`` int64 class ids.
        scores: ``[B, T]`` scores, sorted descending among the valid slots of each image (the rank in
            ``T`` decides who suppresses whom; invalid slots may sit anywhere and hold anything).
        areas: ``[B, T]`` float, ``masks.sum(-1)``.
        valid: ``[B, T]`` bool; invalid slots neither decay others nor are decayed.
        kernel: ``"gaussian"`` or ``"linear"``.
        sigma: Gaussian kernel parameter.

    Returns:
        ``[B, T]`` decayed scores, 0 for invalid slots.
    """
    if kernel not in ("gaussian", "linear"):
        raise ValueError(f"matrix_nms: kernel must be 'gaussian' or 'linear', got {kernel!r}")
    num = masks.shape[1]
    flat = masks.float()
    inter = torch.bmm(flat, flat.transpose(1, 2))  # [B, T, T]
    areas = areas.float()
    union = areas[:, :, None] + areas[:, None, :] - inter
    upper = torch.ones(num, num, dtype=torch.bool, device=masks.device).triu(diagonal=1)
    # Pair (i, j) counts when i ranks above j, both are valid and they share a class.
    pair = upper & (labels[:, :, None] == labels[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    decay_iou = torch.where(pair, inter / union.clamp_min(_EPS), torch.zeros_like(inter))
    # compensate[i]: the largest IoU of candidate i with a higher-ranked candidate of its class.
    compensate = decay_iou.amax(dim=1)[:, :, None]  # [B, T, 1], indexed by row i
    if kernel == "gaussian":
        decay = torch.exp(-sigma * (decay_iou.square() - compensate.square()))
    else:
        decay = (1 - decay_iou) / (1 - compensate).clamp_min(_EPS)
    coefficient = decay.amin(dim=1)  # [B, T], min over rows i for each column j
    return torch.where(valid, scores * coefficient, torch.zeros_like(scores))


def _cell_strides(num_grids: Sequence[int], strides: Sequence[int], device: torch.device) -> Tensor:
    """``[M]`` float: the stride of the level owning each grid cell (levels concatenated)."""
    return torch.cat(
        [torch.full((s * s,), float(st), device=device) for s, st in zip(num_grids, strides, strict=True)]
    )


def _take(x: Tensor, index: Tensor) -> Tensor:
    """``x[b, index[b, t], ...]`` for ``x`` ``[B, T, ...]`` and ``index`` ``[B, T']`` -> ``[B, T', ...]``."""
    shaped = index.reshape(*index.shape, *([1] * (x.dim() - 2)))
    return torch.take_along_dim(x, shaped, dim=1)


def stable_descending_order(keys: Tensor) -> Tensor:
    """Indices that sort each row of ``keys [B, T]`` in descending order, ties kept in index order.

    The result equals ``torch.sort(keys, dim=1, descending=True, stable=True).indices`` for finite keys,
    but is computed from pairwise comparisons (a key's rank is the number of keys ahead of it) and one
    scatter: ONNX has no stable sort, and ``topk`` does not promise an order for ties. It costs
    ``B * T * T`` comparisons, small next to the mask product for the ``T = nms_pre`` candidates.
    """
    num = keys.shape[1]
    index = torch.arange(num, device=keys.device)
    earlier = index[:, None] < index[None, :]  # [T, T]: i comes before j
    above = keys[:, :, None] > keys[:, None, :]
    tied = keys[:, :, None] == keys[:, None, :]
    ahead = above | (tied & earlier)  # [B, T, T]: i is sorted before j
    rank = ahead.sum(dim=1)  # [B, T]: the position of each j
    return torch.zeros_like(rank).scatter(1, rank, index.expand_as(rank).contiguous())


def predict(
    cls_logits: Tensor,
    kernel_preds: Tensor,
    mask_feats: Tensor,
    *,
    num_grids: Sequence[int],
    strides: Sequence[int],
    cfg: InferenceConfig,
) -> Detections:
    """Turn SOLOv2 head outputs into ``cfg.max_per_img`` detection slots per image (static shapes).

    Args:
        cls_logits: ``[B, M, C]`` category logits, levels concatenated, cell ``i * S + j`` row-major
            within a level, ``M = sum(S**2 for S in num_grids)``.
        kernel_preds: ``[B, M, E]`` dynamic 1x1 kernels, same cell order.
        mask_feats: ``[B, E, h, w]`` mask features at stride 4.
        num_grids: ``S`` of each level.
        strides: nominal stride of each level; a mask must cover more than its level's stride pixels.
        cfg: thresholds, ``nms_pre``, Matrix NMS kernel and ``max_per_img``.

    Returns:
        :class:`Detections` with ``K = cfg.max_per_img`` slots sorted by decreasing score: ``scores``
        ``[B, K]`` (0 where invalid), ``labels`` ``[B, K]`` (0 where invalid), ``masks``
        ``[B, K, h, w]`` soft masks (0 where invalid) and ``valid`` ``[B, K]``.
    """
    batch, num_cells, num_classes = cls_logits.shape
    if num_cells != sum(s * s for s in num_grids):
        raise ValueError(
            f"predict: cls_logits has {num_cells} cells, num_grids {list(num_grids)} give "
            f"{sum(s * s for s in num_grids)}"
        )
    if kernel_preds.shape[:2] != (batch, num_cells) or kernel_preds.shape[2] != mask_feats.shape[1]:
        raise ValueError(
            f"predict: kernel_preds {list(kernel_preds.shape)} does not match cls_logits "
            f"{list(cls_logits.shape)} and mask_feats {list(mask_feats.shape)}"
        )
    h, w = mask_feats.shape[-2:]

    # 1. Point NMS per level on the category probabilities.
    probs = cls_logits.sigmoid()
    levels, start = [], 0
    for s in num_grids:
        level = probs[:, start : start + s * s].transpose(1, 2).reshape(batch, num_classes, s, s)
        levels.append(points_nms(level).reshape(batch, num_classes, s * s).transpose(1, 2))
        start += s * s
    probs = torch.cat(levels, dim=1).reshape(batch, num_cells * num_classes)

    # 2. Fixed-size candidate set: the k best (cell, class) pairs, masked by score_thr.
    k = min(cfg.nms_pre, num_cells * num_classes)
    cls_scores, flat_idx = probs.topk(k, dim=1)  # [B, k]
    cells = flat_idx // num_classes
    labels = flat_idx % num_classes
    valid = cls_scores > cfg.score_thr

    # 3. Dynamic convolution (a 1x1 conv is a matrix product) and the area filter.
    kernels = _take(kernel_preds, cells)  # [B, k, E]
    soft = torch.bmm(kernels, mask_feats.reshape(batch, -1, h * w)).sigmoid()  # [B, k, h*w]
    binary = soft > cfg.mask_thr
    areas = binary.sum(dim=2).float()
    cell_strides = _cell_strides(num_grids, strides, cls_logits.device)[cells]  # [B, k]
    valid = valid & (areas > cell_strides)

    # 4. Maskness re-scoring: the mean soft value inside the binary mask.
    inside = torch.where(binary, soft, torch.zeros_like(soft)).sum(dim=2, dtype=torch.float32)
    maskness = inside / areas.clamp_min(1.0)
    scores = torch.where(valid, cls_scores.float() * maskness, torch.zeros_like(maskness))

    # 5. Sort (invalid last, ties keep top-k order) and Matrix NMS.
    order = stable_descending_order(torch.where(valid, scores, -1.0))
    labels, scores, areas, valid = (_take(t, order) for t in (labels, scores, areas, valid))
    decayed = matrix_nms(
        _take(binary, order), labels, scores, areas, valid, kernel=cfg.kernel, sigma=cfg.sigma
    )
    valid = valid & (decayed >= cfg.update_thr)

    # 6. Final ranking into max_per_img slots (padding with invalid slots when k is smaller).
    keep = min(cfg.max_per_img, k)
    final = stable_descending_order(torch.where(valid, decayed, -1.0))[:, :keep]
    valid = _take(valid, final)
    scores = torch.where(valid, _take(decayed, final), torch.zeros_like(valid, dtype=decayed.dtype))
    labels = torch.where(valid, _take(labels, final), torch.zeros_like(final))
    soft = _take(soft, _take(order, final))  # one gather of the big tensor, through both orders
    masks = torch.where(valid[:, :, None], soft, torch.zeros((), dtype=soft.dtype))
    masks = masks.reshape(batch, keep, h, w)
    pad = cfg.max_per_img - keep
    if pad > 0:
        scores, labels = F.pad(scores, (0, pad)), F.pad(labels, (0, pad))
        valid = F.pad(valid, (0, pad))
        masks = F.pad(masks, (0, 0, 0, 0, 0, pad))
    return Detections(scores=scores, labels=labels, masks=masks, valid=valid)


def paste_masks(
    masks: Tensor,
    *,
    image_size: tuple[int, int],
    canvas_size: tuple[int, int],
    original_size: tuple[int, int],
    mask_thr: float,
) -> Tensor:
    """Bring one image's soft masks from the mask-feature grid back to the original image.

    Upsamples to the padded canvas, crops the resized image's valid (top-left) region, resizes to the
    original image size (both bilinear, ``align_corners=False``) and thresholds.

    Args:
        masks: ``[K, h, w]`` soft masks at stride 4.
        image_size: ``(h_img, w_img)`` of the resized image inside the canvas.
        canvas_size: ``(H, W)`` of the padded canvas, normally ``(4 * h, 4 * w)``.
        original_size: ``(H0, W0)`` of the image before resizing.
        mask_thr: a pixel is foreground when its value is greater than this.

    Returns:
        ``[K, H0, W0]`` bool.
    """
    if masks.shape[0] == 0:
        return torch.zeros((0, *original_size), dtype=torch.bool, device=masks.device)
    h_img, w_img = image_size
    up = F.interpolate(masks[None].float(), size=tuple(canvas_size), mode="bilinear", align_corners=False)
    up = up[:, :, :h_img, :w_img]
    out = F.interpolate(up, size=tuple(original_size), mode="bilinear", align_corners=False)
    return out[0] > mask_thr


def encode_rle(masks: Tensor) -> list[dict]:
    """COCO run-length encoding of binary masks.

    On the CPU pycocotools encodes the masks. Masks on an accelerator are not copied to the host: their
    run boundaries are found where they are (:func:`encode_rle_by_runs`) and only those are copied: 0.25 MB
    instead of 30.7 MB for 100 ellipse masks of a 480x640 image in ``bench/eval_postprocess.py``.

    Args:
        masks: ``[K, H, W]`` bool.

    Returns:
        ``K`` dicts ``{"size": [H, W], "counts": str}`` as ``pycocotools.mask.encode`` gives, with
        ``counts`` decoded to ``str`` so that they serialise to JSON.
    """
    if masks.shape[0] == 0:
        return []
    if masks.device.type != "cpu":
        return encode_rle_by_runs(masks)
    array = np.asfortranarray(masks.detach().to(torch.uint8).permute(1, 2, 0).numpy())
    return _with_str_counts(mask_util.encode(array))


def run_starts(masks: Tensor) -> Tensor:
    """``[N, 2]`` int64 ``(mask, position)`` of every pixel of ``[K, H, W]`` masks that starts a COCO RLE run,
    position counted column by column (as COCO reads a mask), on the masks' device, grouped by mask and
    ascending: a pixel that differs from the one before it (the pixel before a mask's first counts as 0)."""
    k, height, width = masks.shape
    columns = masks.detach().bool().transpose(1, 2).reshape(k, height * width)
    before = torch.cat([columns.new_zeros(k, 1), columns[:, :-1]], dim=1)
    return (columns != before).nonzero()


def encode_rle_by_runs(masks: Tensor) -> list[dict]:
    """:func:`encode_rle` computed from :func:`run_starts`, found with tensor ops on the masks' device.

    COCO's RLE counts alternating runs of 0s and 1s, starting with 0s (a count of 0 if the mask starts
    with a 1). Only the run starts are copied to the host, where their differences are the counts and
    pycocotools compresses them into its strings.
    """
    k, height, width = masks.shape
    if k == 0:
        return []
    size = height * width
    mask_index, position = run_starts(masks).cpu().numpy().T
    starts = np.split(position, np.cumsum(np.bincount(mask_index, minlength=k))[:-1])
    counts = [
        {"size": [height, width], "counts": np.diff(s, prepend=0, append=size).tolist()} for s in starts
    ]
    return _with_str_counts(mask_util.frPyObjects(counts, height, width))


def _with_str_counts(rles: list[dict]) -> list[dict]:
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return list(rles)


def masks_to_boxes_xywh(masks: Tensor) -> Tensor:
    """COCO boxes ``(x, y, w, h)`` of each mask's pixel extent (as ``pycocotools.mask.toBbox``).

    Static shapes: no ``nonzero``; an empty mask gets an all-zero box.

    Args:
        masks: ``[K, H, W]`` bool.

    Returns:
        ``[K, 4]`` float32.
    """
    height, width = masks.shape[-2:]
    rows = masks.any(dim=2)  # [K, H]
    cols = masks.any(dim=1)  # [K, W]
    ys = torch.arange(height, device=masks.device)
    xs = torch.arange(width, device=masks.device)
    y0 = torch.where(rows, ys, height).amin(dim=1)
    y1 = torch.where(rows, ys, -1).amax(dim=1)
    x0 = torch.where(cols, xs, width).amin(dim=1)
    x1 = torch.where(cols, xs, -1).amax(dim=1)
    boxes = torch.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], dim=1).float()
    return torch.where(rows.any(dim=1, keepdim=True), boxes, torch.zeros_like(boxes))
