"""Plain dynamic-shape reference of SOLOv2 inference, for testing the static ``solov2.postprocess``.

Written directly from the rules (mmdetection 3.x ``SOLOV2Head`` inference): boolean indexing,
``nonzero`` and Python loops are fine here. One image at a time; Matrix NMS is an explicit double loop
in float64 so that it shares no code path with the batched, vectorised version.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from solov2.config import InferenceConfig

LINEAR_EPS = 1e-6


def ref_points_nms(scores: Tensor) -> Tensor:
    """``[B, C, S, S]``: keep a cell when it is >= its up, left and up-left neighbours."""
    padded = F.pad(scores, (1, 0, 1, 0), value=float("-inf"))
    up = padded[..., :-1, 1:]
    left = padded[..., 1:, :-1]
    up_left = padded[..., :-1, :-1]
    keep = (scores >= up) & (scores >= left) & (scores >= up_left)
    return torch.where(keep, scores, torch.zeros_like(scores))


def ref_matrix_nms(masks: Tensor, labels: Tensor, scores: Tensor, *, kernel: str, sigma: float) -> Tensor:
    """Matrix NMS of ``n`` valid candidates already sorted by decreasing score.

    ``masks`` ``[n, K]`` binary, ``labels`` ``[n]``, ``scores`` ``[n]`` -> decayed scores ``[n]``.
    The linear kernel's denominator ``1 - compensate`` is clamped to ``LINEAR_EPS``.
    """
    n = masks.shape[0]
    m = masks.double().tolist()
    lab = labels.tolist()
    area = [sum(row) for row in m]
    iou = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if lab[i] != lab[j]:
                continue
            inter = sum(a * b for a, b in zip(m[i], m[j], strict=True))
            union = area[i] + area[j] - inter
            iou[i][j] = inter / union if union > 0 else 0.0
    compensate = [max((iou[k][i] for k in range(n)), default=0.0) for i in range(n)]
    out = []
    for j in range(n):
        coefficient = math.inf
        for i in range(n):
            d, c = iou[i][j], compensate[i]
            if kernel == "gaussian":
                value = math.exp(-sigma * d * d) / math.exp(-sigma * c * c)
            else:
                value = (1.0 - d) / max(1.0 - c, LINEAR_EPS)
            coefficient = min(coefficient, value)
        out.append(float(scores[j]) * coefficient)
    return torch.tensor(out, dtype=torch.float64)


def ref_predict_single(
    cls_logits: Tensor,
    kernel_preds: Tensor,
    mask_feats: Tensor,
    *,
    num_grids: Sequence[int],
    strides: Sequence[int],
    cfg: InferenceConfig,
) -> tuple[Tensor, Tensor, Tensor]:
    """One image, dynamic shapes: ``cls_logits`` ``[M, C]``, ``kernel_preds`` ``[M, E]``,
    ``mask_feats`` ``[E, h, w]`` -> (scores ``[n]``, labels ``[n]``, soft masks ``[n, h, w]``) sorted
    by decreasing score.
    """
    num_classes = cls_logits.shape[1]
    probs = cls_logits.sigmoid()
    parts, start = [], 0
    for s in num_grids:
        level = probs[start : start + s * s].T.reshape(1, num_classes, s, s)
        parts.append(ref_points_nms(level).reshape(num_classes, s * s).T)
        start += s * s
    probs = torch.cat(parts)

    # Every (cell, class) above the threshold.
    above = probs > cfg.score_thr
    cells, labels = above.nonzero(as_tuple=True)
    cls_scores = probs[above]
    cell_stride = torch.tensor(
        [float(st) for s, st in zip(num_grids, strides, strict=True) for _ in range(s * s)]
    )

    # Masks by a 1x1 convolution.
    kernels = kernel_preds[cells]
    soft = F.conv2d(mask_feats[None], kernels[:, :, None, None])[0].sigmoid()  # [n, h, w]
    binary = soft > cfg.mask_thr
    areas = binary.sum(dim=(1, 2)).float()
    keep = areas > cell_stride[cells]
    soft, binary, areas, cls_scores, labels = (
        soft[keep],
        binary[keep],
        areas[keep],
        cls_scores[keep],
        labels[keep],
    )

    # Maskness.
    maskness = (soft * binary).sum(dim=(1, 2)) / areas
    scores = cls_scores * maskness

    # Sort, keep nms_pre, Matrix NMS, filter, sort, keep max_per_img.
    order = torch.sort(scores, descending=True, stable=True).indices[: cfg.nms_pre]
    soft, binary, scores, labels = soft[order], binary[order], scores[order], labels[order]
    decayed = ref_matrix_nms(binary.flatten(1), labels, scores, kernel=cfg.kernel, sigma=cfg.sigma)
    keep = decayed >= cfg.update_thr
    soft, decayed, labels = soft[keep], decayed[keep], labels[keep]
    order = torch.sort(decayed, descending=True, stable=True).indices[: cfg.max_per_img]
    return decayed[order], labels[order], soft[order]
