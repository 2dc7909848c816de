"""SOLOv2 head: category and kernel branches per FPN level, and the unified mask-feature branch.

Shapes below use B images, FPN levels l with S_l x S_l grids, M = sum_l S_l**2 cells, C classes and
E mask-feature channels (the length of every dynamic 1x1 kernel).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_gn_relu(in_channels: int, out_channels: int, *, groups: int) -> nn.Sequential:
    """3x3 convolution (no bias) + GroupNorm + ReLU, the head's building block."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(groups, out_channels),
        nn.ReLU(inplace=True),
    )


def coordinates(feat: Tensor) -> Tensor:
    """CoordConv channels for ``feat`` ``[B, *, H, W]``: ``[B, 2, H, W]`` holding x then y in [-1, 1]."""
    b, _, h, w = feat.shape
    x = torch.linspace(-1, 1, w, device=feat.device, dtype=feat.dtype)
    y = torch.linspace(-1, 1, h, device=feat.device, dtype=feat.dtype)
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([xx, yy]).expand(b, 2, h, w)


def flatten_levels(per_level: Sequence[Tensor]) -> Tensor:
    """``[[B, K, S_l, S_l] for l]`` -> ``[B, M, K]`` with cell index ``i * S_l + j`` inside each level."""
    return torch.cat([t.flatten(2).transpose(1, 2) for t in per_level], dim=1)


class SOLOv2Head(nn.Module):
    """Category and kernel branches, shared across levels.

    Level 0 is downsampled x0.5 and the last level resized to the one before it (strides 8, 8, 16,
    32, 32 for P2..P6); each level is then resized to its S x S grid. The kernel branch sees two extra
    CoordConv channels; the category branch does not.

    Returns ``cls_logits [B, M, C]`` and ``kernel_preds [B, M, E]``.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int = 256,
        feat_channels: int = 512,
        stacked_convs: int = 4,
        kernel_channels: int = 256,
        num_grids: Sequence[int] = (40, 36, 24, 16, 12),
        norm_groups: int = 32,
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        self.num_grids = tuple(num_grids)
        self.kernel_convs = nn.Sequential(
            *(
                conv_gn_relu(in_channels + 2 if i == 0 else feat_channels, feat_channels, groups=norm_groups)
                for i in range(stacked_convs)
            )
        )
        self.cls_convs = nn.Sequential(
            *(
                conv_gn_relu(in_channels if i == 0 else feat_channels, feat_channels, groups=norm_groups)
                for i in range(stacked_convs)
            )
        )
        self.conv_kernel = nn.Conv2d(feat_channels, kernel_channels, 3, padding=1)
        self.conv_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.conv_cls.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        if len(feats) != len(self.num_grids):
            raise ValueError(f"expected {len(self.num_grids)} FPN levels, got {len(feats)}")
        feats = list(feats)
        feats[0] = F.interpolate(feats[0], scale_factor=0.5, mode="bilinear", align_corners=False)
        feats[-1] = F.interpolate(feats[-1], size=feats[-2].shape[-2:], mode="bilinear", align_corners=False)
        cls_levels, kernel_levels = [], []
        for feat, grid in zip(feats, self.num_grids, strict=True):
            feat = torch.cat([feat, coordinates(feat)], dim=1)
            feat = F.interpolate(feat, size=(grid, grid), mode="bilinear", align_corners=False)
            kernel_levels.append(self.conv_kernel(self.kernel_convs(feat)))
            cls_levels.append(self.conv_cls(self.cls_convs(feat[:, :-2].contiguous())))
        return flatten_levels(cls_levels), flatten_levels(kernel_levels)


class MaskFeatureBranch(nn.Module):
    """Fuses FPN levels ``start_level..end_level`` into one stride-4 map of E channels.

    Level k gets k rounds of (3x3 conv + GN + ReLU, bilinear x2 upsampling); the deepest level also
    gets CoordConv channels. The sum goes through a 1x1 conv + GN + ReLU.
    ``[P2 [B, 256, H/4, W/4], ...] -> [B, E, H/4, W/4]``.
    """

    def __init__(
        self,
        *,
        in_channels: int = 256,
        feat_channels: int = 128,
        out_channels: int = 256,
        start_level: int = 0,
        end_level: int = 3,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        self.start_level, self.end_level = start_level, end_level
        self.levels = nn.ModuleList()
        num = end_level - start_level + 1
        for k in range(num):
            if k == 0:
                self.levels.append(conv_gn_relu(in_channels, feat_channels, groups=norm_groups))
                continue
            layers: list[nn.Module] = []
            for j in range(k):
                first_in = in_channels + (2 if k == num - 1 else 0)
                layers.append(
                    conv_gn_relu(first_in if j == 0 else feat_channels, feat_channels, groups=norm_groups)
                )
                layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.levels.append(nn.Sequential(*layers))
        self.conv_pred = nn.Sequential(
            nn.Conv2d(feat_channels, out_channels, 1, bias=False),
            nn.GroupNorm(norm_groups, out_channels),
            nn.ReLU(inplace=True),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        inputs = feats[self.start_level : self.end_level + 1]
        fused = self.levels[0](inputs[0])
        for k in range(1, len(inputs)):
            x = inputs[k]
            if k == len(inputs) - 1:
                x = torch.cat([x, coordinates(x)], dim=1)
            fused = fused + self.levels[k](x)
        return self.conv_pred(fused)
