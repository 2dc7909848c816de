"""SOLOv2 losses on static-shape targets: sigmoid focal loss on the category grids, dice loss on masks.

:func:`solov2_losses` follows mmdetection 3.x ``SOLOV2Head.loss_by_feat`` (R50 recipe): the focal loss
is summed over all cells and classes and divided by ``num_pos + 1``; the dice loss of every
(instance, cell) pair is summed and divided by ``num_pos``, where ``num_pos`` is the number of distinct
positive cells over the whole batch. The masks of the positive pairs come from a 1 x 1 dynamic
convolution, computed as one batched matrix product over the fixed pair buffer; unused slots are
masked out with ``torch.where``, so the graph has no data-dependent shapes and stays connected (and
differentiable) when the batch has no positive at all. Both losses are computed in float32, also under
autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import LossConfig
from .targets import Targets

__all__ = ["dice_loss", "sigmoid_focal_loss", "solov2_losses"]


def sigmoid_focal_loss(logits: Tensor, labels: Tensor, *, alpha: float, gamma: float) -> Tensor:
    """Sum of the sigmoid focal loss over all elements, with one-hot targets built from ``labels``.

    Args:
        logits: ``[..., C]`` category logits (any float dtype; computed in float32).
        labels: ``[...]`` int64 in ``[0, C]``; ``C`` is background (all-zero target row).

    Returns:
        Scalar float32: ``sum(-alpha_t * (1 - p_t) ** gamma * log(p_t))``.
    """
    logits = logits.float()
    num_classes = logits.shape[-1]
    classes = torch.arange(num_classes, device=logits.device)
    targets = (labels[..., None] == classes).float()  # [..., C]; background matches no class
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * (1 - p_t) ** gamma * ce).sum()


def dice_loss(probs: Tensor, targets: Tensor, *, eps: float) -> Tensor:
    """Per-row dice loss ``1 - 2 * sum(p * t) / ((sum(p * p) + eps) + (sum(t * t) + eps))``.

    Args:
        probs: ``[..., K]`` probabilities.
        targets: ``[..., K]`` binary targets (any dtype; cast to ``probs``' dtype).

    Returns:
        ``[...]`` loss per row.
    """
    targets = targets.to(probs.dtype)
    inter = (probs * targets).sum(dim=-1)
    denom = ((probs * probs).sum(dim=-1) + eps) + ((targets * targets).sum(dim=-1) + eps)
    return 1 - 2 * inter / denom


def solov2_losses(
    cls_logits: Tensor,
    kernel_preds: Tensor,
    mask_feats: Tensor,
    gt_masks_s4: Tensor,
    targets: Targets,
    *,
    cfg: LossConfig,
) -> dict[str, Tensor]:
    """Category (focal) and mask (dice) losses of a batch.

    Args:
        cls_logits: ``[B, M, C]`` category logits of all cells, levels concatenated as in ``targets``.
        kernel_preds: ``[B, M, E]`` dynamic 1 x 1 kernels of all cells.
        mask_feats: ``[B, E, h, w]`` unified mask features (stride 4).
        gt_masks_s4: ``[B, N, h, w]`` uint8/bool instance masks at stride 4 (:func:`downsample_masks`).
        targets: :class:`~solov2.targets.Targets` of the batch (``P`` pair slots per image).
        cfg: loss weights and focal/dice parameters.

    Returns:
        ``loss_cls`` and ``loss_mask`` (float32 scalars), ``num_positives`` (float32 scalar, detached:
        distinct positive cells in the batch) and ``dropped_positives`` (int64 scalar: pairs that did
        not fit in the buffer, summed over the batch).
    """
    batch, num_cells, embed = kernel_preds.shape
    num_inst = gt_masks_s4.shape[1]
    height, width = mask_feats.shape[-2:]
    num_pos = targets.pos_cells.sum().float().detach()

    loss_cls = sigmoid_focal_loss(cls_logits, targets.labels, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)
    loss_cls = cfg.cls_weight * loss_cls / (num_pos + 1)

    # Gather the kernel of every pair slot and its target mask (flat indices, no boolean indexing).
    base = torch.arange(batch, device=kernel_preds.device)[:, None]
    kernels = kernel_preds.reshape(batch * num_cells, embed).index_select(
        0, (base * num_cells + targets.pair_cell).flatten()
    )
    kernels = kernels.view(batch, -1, embed)  # [B, P, E]
    mask_logits = torch.bmm(kernels, mask_feats.reshape(batch, embed, height * width))  # [B, P, h*w]
    probs = torch.sigmoid(mask_logits.float())
    mask_targets = gt_masks_s4.reshape(batch * num_inst, height * width).index_select(
        0, (base * num_inst + targets.pair_instance).flatten()
    )
    mask_targets = mask_targets.view(batch, -1, height * width)  # [B, P, h*w]
    dice = dice_loss(probs, mask_targets, eps=cfg.dice_eps)  # [B, P]
    dice = torch.where(targets.pair_valid, dice, torch.zeros_like(dice))
    loss_mask = cfg.dice_weight * dice.sum() / num_pos.clamp(min=1)

    return {
        "loss_cls": loss_cls,
        "loss_mask": loss_mask,
        "num_positives": num_pos,
        "dropped_positives": targets.num_dropped.sum(),
    }
