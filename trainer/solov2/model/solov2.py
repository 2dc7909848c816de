"""SOLOv2: backbone + FPN + head + mask features, wired to static targets, losses and post-processing."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import Config
from ..losses import solov2_losses
from ..postprocess import predict
from ..structures import MASK_STRIDE, CompactGroundTruth, Detections, GroundTruth
from ..targets import LevelGeometry, build_targets, downsample_masks
from .backbone import FPN, build_backbone
from .head import MaskFeatureBranch, SOLOv2Head


class SOLOv2(nn.Module):
    """SOLOv2 instance segmentation with static shapes end to end.

    ``forward(images, gt)`` takes RGB images ``[B, 3, H, W]`` (uint8 or float in 0..255, padded to a
    canvas whose sides are multiples of 32; normalised inside the model, on the device).
    ``gt`` is a :class:`~solov2.structures.CompactGroundTruth` (what the loaders give) or a full-resolution
    :class:`~solov2.structures.GroundTruth`; both give the same targets and losses.
    In training mode it returns a dict of named tensors: ``loss_cls``, ``loss_mask`` (their sum is the
    loss to minimise), and the detached statistics ``num_positives`` and ``dropped_positives``.
    In eval mode it returns :class:`~solov2.structures.Detections` with ``max_per_img`` slots.
    """

    def __init__(self, cfg: Config, *, pretrained: bool = False) -> None:
        super().__init__()
        m = cfg.model
        self.cfg = cfg
        self.backbone = build_backbone(m.backbone, pretrained=pretrained)
        self.fpn = FPN(
            in_channels=self.backbone.out_channels, out_channels=m.fpn.out_channels, num_outs=m.fpn.num_outs
        )
        self.head = SOLOv2Head(
            num_classes=m.head.num_classes,
            in_channels=m.fpn.out_channels,
            feat_channels=m.head.feat_channels,
            stacked_convs=m.head.stacked_convs,
            kernel_channels=m.mask_feature.out_channels,
            num_grids=m.head.num_grids,
            norm_groups=m.head.norm_groups,
            prior_prob=m.head.prior_prob,
        )
        self.mask_feature = MaskFeatureBranch(
            in_channels=m.fpn.out_channels,
            feat_channels=m.mask_feature.feat_channels,
            out_channels=m.mask_feature.out_channels,
            start_level=m.mask_feature.start_level,
            end_level=m.mask_feature.end_level,
            norm_groups=m.head.norm_groups,
        )
        self.target_geometry = LevelGeometry(m.head.num_grids, m.head.scale_ranges)
        self.register_buffer("pixel_mean", torch.tensor(cfg.data.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.data.std).view(1, 3, 1, 1), persistent=False)

    def features(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``images [B, 3, H, W]`` -> ``cls_logits [B, M, C]``, ``kernel_preds [B, M, E]``,
        ``mask_feats [B, E, H/4, W/4]``."""
        x = (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        feats = self.fpn(self.backbone(x))
        cls_logits, kernel_preds = self.head(feats)
        return cls_logits, kernel_preds, self.mask_feature(feats)

    def forward(
        self, images: Tensor, gt: GroundTruth | CompactGroundTruth | None = None
    ) -> dict[str, Tensor] | Detections:
        cls_logits, kernel_preds, mask_feats = self.features(images)
        if self.training:
            if gt is None:
                raise ValueError("SOLOv2 in training mode needs ground truth: model(images, gt)")
            return self.loss(cls_logits, kernel_preds, mask_feats, gt)
        h = self.cfg.model.head
        return predict(
            cls_logits,
            kernel_preds,
            mask_feats,
            num_grids=h.num_grids,
            strides=h.strides,
            cfg=self.cfg.model.inference,
        )

    def loss(
        self,
        cls_logits: Tensor,
        kernel_preds: Tensor,
        mask_feats: Tensor,
        gt: GroundTruth | CompactGroundTruth,
    ) -> dict[str, Tensor]:
        m = self.cfg.model
        with torch.no_grad():
            targets = build_targets(
                gt,
                num_grids=m.head.num_grids,
                scale_ranges=m.head.scale_ranges,
                pos_scale=m.head.pos_scale,
                num_classes=m.head.num_classes,
                max_positives=m.targets.max_positives,
                geometry=self.target_geometry,
            )
            compact = isinstance(gt, CompactGroundTruth)
            gt_masks_s4 = gt.masks if compact else downsample_masks(gt.masks, MASK_STRIDE)
        return solov2_losses(cls_logits, kernel_preds, mask_feats, gt_masks_s4, targets, cfg=m.loss)


def total_loss(outputs: dict[str, Tensor]) -> Tensor:
    """Sum of the ``loss_*`` entries of a training forward's output."""
    return sum(v for k, v in outputs.items() if k.startswith("loss_"))  # type: ignore[return-value]


def build_model(cfg: Config, *, pretrained: bool = True) -> SOLOv2:
    """The one place config meets code: the SOLOv2 model ``cfg`` describes. ``pretrained`` loads the
    backbone's ``model.backbone.weights`` if set (training); a checkpoint's weights replace them anyway."""
    return SOLOv2(cfg, pretrained=pretrained)


def parameter_counts(model: SOLOv2) -> dict[str, int]:
    """Parameters per part (backbone, fpn, head incl. mask features, total)."""

    def count(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    counts = {
        "backbone": count(model.backbone),
        "fpn": count(model.fpn),
        "head": count(model.head) + count(model.mask_feature),
    }
    counts["total"] = sum(counts.values())
    counts["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return counts
