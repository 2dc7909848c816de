"""The model's architecture, parameter counts, backbone weight loading and frozen parts."""

from __future__ import annotations

import pytest
import torch
import torchvision

from solov2.config import load_config
from solov2.data.synthetic import write_synthetic_coco
from solov2.device import setup_runtime
from solov2.engine.train import TrainOptions, _Trainer
from solov2.errors import ConfigError, WeightsError
from solov2.model import SOLOv2, build_model, parameter_counts
from solov2.model.backbone import BACKBONES, ResNet, build_backbone, random_backbone_warning
from solov2.model.head import MaskFeatureBranch, SOLOv2Head, coordinates


def test_r50_1x_parameter_count_matches_the_reference_within_one_percent():
    counts = parameter_counts(SOLOv2(load_config("solov2_r50_fpn_1x_coco")))
    print("R50-FPN 1x parameters:", counts)
    # Reference implementation (mmdetection SOLOv2 R50): 23.5 M backbone, 3.3 M FPN, 19.7 M head, ~46.6 M.
    for part, ref in (("backbone", 23.51e6), ("fpn", 3.34e6), ("head", 19.74e6), ("total", 46.59e6)):
        assert abs(counts[part] - ref) / ref < 0.01, (part, counts[part])
    # Stem + layer1 are frozen (frozen_stages=1): conv1 9408 + its BN 128 + layer1 215808 params.
    assert counts["total"] - counts["trainable"] == 9408 + 128 + 215808


def test_head_output_shapes_follow_the_grids():
    head = SOLOv2Head(
        num_classes=5,
        in_channels=32,
        feat_channels=32,
        stacked_convs=2,
        kernel_channels=16,
        num_grids=(8, 6, 4, 3, 2),
        norm_groups=8,
    )
    feats = [torch.randn(2, 32, 64 // s, 64 // s) for s in (4, 8, 16, 32, 64)]
    cls_logits, kernel_preds = head(feats)
    assert cls_logits.shape == (2, 64 + 36 + 16 + 9 + 4, 5)
    assert kernel_preds.shape == (2, 64 + 36 + 16 + 9 + 4, 16)
    # The category branch starts at the prior probability.
    assert torch.allclose(torch.sigmoid(cls_logits).mean(), torch.tensor(0.01), atol=5e-3)
    fused = MaskFeatureBranch(in_channels=32, feat_channels=16, out_channels=16, norm_groups=8)(feats)
    assert fused.shape == (2, 16, 16, 16)


def test_coordinates_span_minus_one_to_one():
    c = coordinates(torch.zeros(1, 4, 3, 5))
    assert c.shape == (1, 2, 3, 5)
    assert c[0, 0, 0].tolist() == pytest.approx([-1, -0.5, 0, 0.5, 1])
    assert c[0, 1, :, 0].tolist() == pytest.approx([-1, 0, 1])


def test_frozen_stages_and_norm_eval_survive_train_mode():
    net = ResNet(depth=18, frozen_stages=1, norm_eval=True).train()
    assert not any(p.requires_grad for p in net.stem.parameters())
    assert not any(p.requires_grad for p in net.layer1.parameters())
    assert all(p.requires_grad for p in net.layer2.parameters())
    assert all(not m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    stats = net.layer3[0].bn1.running_mean.clone()
    net(torch.randn(2, 3, 64, 64))
    assert torch.equal(stats, net.layer3[0].bn1.running_mean)
    net = ResNet(depth=18, frozen_stages=-1, norm_eval=False).train()
    assert all(p.requires_grad for p in net.parameters())
    assert net.layer3[0].bn1.training


def test_frozen_stages_stay_frozen_as_sync_batch_norm():
    """Distributed accelerator runs convert to SyncBatchNorm (``train.sync_bn``, with ``norm_eval``
    false), which is no BatchNorm2d: the frozen stages' statistics must still not train."""
    net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(ResNet(depth=18, frozen_stages=1, norm_eval=False))
    net.train()
    frozen = [m for s in (net.stem, net.layer1) for m in s.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert frozen and not any(m.training for m in frozen)
    assert net.layer2[0].bn1.training and isinstance(net.layer2[0].bn1, torch.nn.SyncBatchNorm)


def test_a_reference_recipe_without_backbone_weights_is_warned_about(tmp_path):
    backbone = load_config("solov2_r50_fpn_1x_coco", []).model.backbone
    note = random_backbone_warning(backbone)
    assert note is not None and note.startswith("model.backbone.weights is empty: the resnet50 backbone")
    assert "stem and layer1 never train (frozen_stages=1)" in note and "(norm_eval=true)" in note
    assert "resnet50.pth" in note and "frozen_stages=-1 model.backbone.norm_eval=false" in note
    assert random_backbone_warning(backbone, load_from=tmp_path / "trained.pth") is None
    with_weights = load_config("solov2_r50_fpn_1x_coco", ["model.backbone.weights=resnet50.pth"])
    assert random_backbone_warning(with_weights.model.backbone) is None
    assert random_backbone_warning(load_config("solov2_tiny_cpu", []).model.backbone) is None  # from scratch
    frozen_only = load_config("solov2_tiny_cpu", ["model.backbone.frozen_stages=3"]).model.backbone
    assert "stem and layer1 to layer3 never train" in (random_backbone_warning(frozen_only) or "")
    assert "(norm_eval=true)" not in (random_backbone_warning(frozen_only) or "(norm_eval=true)")


def test_train_logs_the_random_backbone_warning(tmp_path):
    coco = write_synthetic_coco(tmp_path / "coco", train=4, val=0, seed=1)
    opts = TrainOptions(
        data_path=coco, work_dir=tmp_path / "work", device="cpu", evaluate=False, termination_log=None
    )
    for overrides, warned in (([], False), (["model.backbone.norm_eval=true"], True)):
        lines: list[str] = []
        _Trainer(load_config("solov2_tiny_cpu", overrides), opts, setup_runtime("cpu"), log=lines.append)
        assert [line for line in lines if "warning: model.backbone.weights is empty" in line] == (
            [f"warning: {random_backbone_warning(load_config('solov2_tiny_cpu', overrides).model.backbone)}"]
            if warned
            else []
        )


def test_loads_torchvision_weights_from_a_local_file(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    cfg = load_config("solov2_tiny_cpu", [f"model.backbone.weights={path}"])
    model = build_model(cfg)
    assert torch.equal(model.backbone.stem[0].weight, reference.conv1.weight)
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)


def test_weight_errors_say_what_is_wrong(tmp_path):
    cfg = load_config("solov2_tiny_cpu", [f"model.backbone.weights={tmp_path / 'missing.pth'}"])
    with pytest.raises(WeightsError, match=r"model\.backbone\.weights: no file at .*missing\.pth"):
        build_model(cfg)
    wrong = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), wrong)
    cfg = load_config("solov2_tiny_cpu", [f"model.backbone.weights={wrong}"])
    with pytest.raises(WeightsError, match=r"not a torchvision ResNet-18 checkpoint: .*unexpected keys"):
        build_model(cfg)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    cfg = load_config("solov2_tiny_cpu", [f"model.backbone.weights={garbage}"])
    with pytest.raises(WeightsError, match="cannot read"):
        build_model(cfg)


def test_backbones_are_built_by_name_and_meet_the_contract(monkeypatch):
    cfg = load_config("solov2_tiny_cpu")
    backbone = build_backbone(cfg.model.backbone)
    feats = backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[-2:]) for f in feats] == [(64 // s, 96 // s) for s in (4, 8, 16, 32)]
    assert tuple(f.shape[1] for f in feats) == tuple(backbone.out_channels)

    class Tiny(torch.nn.Module):  # another backbone: a registry entry is all it takes
        out_channels = (8, 8, 8, 8)

        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 8, 3, stride=4, padding=1)

        def forward(self, x):
            c2 = self.stem(x)
            return [c2, *(torch.nn.functional.max_pool2d(c2, 2**k) for k in (1, 2, 3))]

    monkeypatch.setitem(BACKBONES, "tiny", lambda _cfg, _pretrained: Tiny())
    model = build_model(load_config("solov2_tiny_cpu", ["model.backbone.name=tiny"])).eval()
    assert isinstance(model.backbone, Tiny)
    det = model(torch.zeros(1, 3, 64, 96, dtype=torch.uint8))
    assert det.scores.shape[0] == 1
    with pytest.raises(ConfigError, match=r"model\.backbone\.name: is 'vgg', must be one of .*resnet"):
        build_model(load_config("solov2_tiny_cpu", ["model.backbone.name=vgg"]))
