"""Backbones, built by name by :func:`build_backbone`, and the FPN producing P2..P6 from them.

The contract a backbone meets (what :class:`FPN` and the head rely on):

- ``forward(x)`` takes normalised images ``[B, 3, H, W]`` (sides multiples of 32) and returns four
  feature maps ``[C2, C3, C4, C5]`` at strides 4, 8, 16 and 32 (``[B, c_i, H/s, W/s]``);
- ``out_channels`` is the tuple of their channel counts ``(c2, c3, c4, c5)``;
- ``train(mode)`` may keep parts frozen or in eval mode; parameters it freezes have
  ``requires_grad=False`` (the optimiser skips them).

Adding a backbone: write its module and a builder ``(BackboneConfig, pretrained) -> nn.Module`` here,
and add it to :data:`BACKBONES` under the name ``model.backbone.name`` selects.

ResNet weights load only from a local torchvision-format file (the ``resnet50.pth`` the ModelZoo README
asks users to download); nothing is ever downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from ..config import BackboneConfig
from ..errors import ConfigError, WeightsError
from .state_dicts import compare_state_dicts

RESNET_CHANNELS = {
    18: (64, 128, 256, 512),
    34: (64, 128, 256, 512),
    50: (256, 512, 1024, 2048),
    101: (256, 512, 1024, 2048),
}


class ResNet(nn.Module):
    """torchvision ResNet trunk returning C2..C5 (strides 4, 8, 16, 32).

    Args:
        depth: 18, 34, 50 or 101.
        frozen_stages: -1 freezes nothing, 0 the stem, 1 the stem and layer1 (the reference), k up to layer k.
        norm_eval: keep every BatchNorm in eval mode (running statistics fixed) even while training;
            its affine parameters still train outside the frozen stages, as in the reference.
    """

    def __init__(self, *, depth: int = 50, frozen_stages: int = 1, norm_eval: bool = True) -> None:
        super().__init__()
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        self.depth = depth
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = RESNET_CHANNELS[depth]
        self.norm_eval = norm_eval
        self.frozen_stages = frozen_stages
        for stage in self._frozen():
            for p in stage.parameters():
                p.requires_grad_(False)
        self.train()

    def _frozen(self) -> list[nn.Module]:
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4][: self.frozen_stages + 1]

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        for module in [self] if self.norm_eval else self._frozen():
            for m in module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):  # SyncBatchNorm too (not a BatchNorm2d)
                    m.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        """``[B, 3, H, W]`` -> ``[C2 [B, c2, H/4, W/4], C3, C4, C5 [B, c5, H/32, W/32]]``."""
        x = self.stem(x)
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]

    def load_torchvision_weights(self, path: str | Path) -> None:
        """Load an ImageNet checkpoint in torchvision's key format (``conv1.weight``, ``layer1.0...``).

        The classifier (``fc.*``) is ignored; any other missing, unexpected or mis-shaped key is an error.
        """
        path = Path(path)
        if not path.is_file():
            raise WeightsError(
                f"model.backbone.weights: no file at {path}. Put a torchvision ResNet-{self.depth} "
                f"state dict there (e.g. resnet{self.depth}.pth), or set the field to '' to train from scratch."
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightsError(f"model.backbone.weights: cannot read {path}: {exc}") from exc
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise WeightsError(f"model.backbone.weights: {path} does not hold a state dict")
        renamed = {}
        for key, value in state.items():
            key = key.removeprefix("module.")
            if key.startswith("fc."):
                continue
            for prefix, new in (("conv1.", "stem.0."), ("bn1.", "stem.1.")):
                if key.startswith(prefix):
                    key = new + key[len(prefix) :]
            renamed[key] = value
        missing, unexpected, bad_shape = compare_state_dicts(self.state_dict(), renamed)
        # Old torchvision checkpoints lack BatchNorm's num_batches_tracked counters: not an error.
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected or bad_shape:

            def head(keys: list[str]) -> str:
                return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

            problems = []
            if missing:
                problems.append(f"missing keys: {head(missing)}")
            if unexpected:
                problems.append(f"unexpected keys: {head(unexpected)}")
            if bad_shape:
                problems.append(f"shape mismatch: {head(bad_shape)}")
            raise WeightsError(
                f"model.backbone.weights: {path} is not a torchvision ResNet-{self.depth} checkpoint: "
                + "; ".join(problems)
            )
        self.load_state_dict(renamed, strict=False)


def _resnet(cfg: BackboneConfig, pretrained: bool) -> ResNet:
    net = ResNet(depth=cfg.depth, frozen_stages=cfg.frozen_stages, norm_eval=cfg.norm_eval)
    if pretrained and cfg.weights:
        net.load_torchvision_weights(cfg.weights)
    return net


BACKBONES: dict[str, Callable[[BackboneConfig, bool], nn.Module]] = {"resnet": _resnet}
"""Backbone builders by ``model.backbone.name``: ``(config, pretrained) -> backbone``."""


def random_backbone_warning(cfg: BackboneConfig, *, load_from: Path | None = None) -> str | None:
    """Why a run whose backbone starts from random weights will not learn as the recipe expects, or
    ``None``. Freezing stages and BatchNorm statistics is right for ImageNet weights; on random ones it
    fixes random filters and leaves every BatchNorm at mean 0, variance 1 for the whole run."""
    if cfg.weights or load_from is not None:
        return None
    frozen = []
    if cfg.frozen_stages >= 0:
        layers = {0: "", 1: " and layer1"}.get(cfg.frozen_stages, f" and layer1 to layer{cfg.frozen_stages}")
        frozen.append(f"its stem{layers} never train (frozen_stages={cfg.frozen_stages})")
    if cfg.norm_eval:
        frozen.append("its BatchNorm statistics stay at their initial values (norm_eval=true)")
    if not frozen:
        return None
    name = f"{cfg.name}{cfg.depth}" if cfg.name == "resnet" else cfg.name
    return (
        f"model.backbone.weights is empty: the {name} backbone starts from random weights, yet "
        + " and ".join(frozen)
        + ": settings meant for ImageNet weights, without which the reference AP is out of reach. Set "
        f"model.backbone.weights to a torchvision state dict (e.g. {name}.pth) or pass --load-from; to "
        "train the backbone from scratch, model.backbone.frozen_stages=-1 model.backbone.norm_eval=false"
    )


def build_backbone(cfg: BackboneConfig, *, pretrained: bool = True) -> nn.Module:
    """The backbone ``cfg.name`` names; ``pretrained`` loads ``cfg.weights`` if it is set."""
    if cfg.name not in BACKBONES:
        raise ConfigError(
            f"model.backbone.name: is {cfg.name!r}, must be one of {', '.join(sorted(BACKBONES))}"
        )
    return BACKBONES[cfg.name](cfg, pretrained)


class FPN(nn.Module):
    """Feature pyramid: 1x1 laterals, top-down nearest upsampling, 3x3 outputs, extra levels by max-pool.

    ``[C2..C5] -> [P2..P(1+num_outs)]``, each with ``out_channels`` channels.
    """

    def __init__(self, *, in_channels: tuple[int, ...], out_channels: int = 256, num_outs: int = 5) -> None:
        super().__init__()
        if num_outs < len(in_channels):
            raise ValueError(f"model.fpn.num_outs must be at least {len(in_channels)}, got {num_outs}")
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels
        )
        self.num_outs = num_outs
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"
            )
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals, strict=True)]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return outs
