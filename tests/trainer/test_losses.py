"""SOLOv2 losses against a per-image, per-pair loop on the reference targets; static compilation."""

from __future__ import annotations

import pytest
import torch
import torchvision

from solov2.config import LossConfig
from solov2.losses import dice_loss, sigmoid_focal_loss, solov2_losses
from solov2.structures import GroundTruth
from solov2.targets import build_targets, downsample_masks
from tests.trainer.reference_targets import flatten_levels, random_ground_truth, reference_targets

NUM_GRIDS = (12, 10, 8, 6, 4)
SCALE_RANGES = ((1.0, 12.0), (6.0, 24.0), (12.0, 48.0), (24.0, 96.0), (48.0, 256.0))
NUM_CLASSES = 5
KW = dict(num_grids=NUM_GRIDS, scale_ranges=SCALE_RANGES, pos_scale=0.2, num_classes=NUM_CLASSES)
NUM_CELLS = sum(s * s for s in NUM_GRIDS)
EMBED = 8
CFG = LossConfig()


def _gt(seed: int, canvas: tuple[int, int] = (64, 96), max_instances: int = 8) -> GroundTruth:
    gen = torch.Generator().manual_seed(seed)
    return GroundTruth(
        *random_ground_truth(
            gen,
            batch=2,
            max_instances=max_instances,
            canvas=canvas,
            num_classes=NUM_CLASSES,
            num_grids=NUM_GRIDS,
        )
    )


def _preds(seed: int, batch: int, canvas: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    h, w = canvas[0] // 4, canvas[1] // 4
    cls_logits = torch.randn(batch, NUM_CELLS, NUM_CLASSES, generator=gen) * 2 - 2
    kernel_preds = torch.randn(batch, NUM_CELLS, EMBED, generator=gen)
    mask_feats = torch.randn(batch, EMBED, h, w, generator=gen)
    return cls_logits.requires_grad_(), kernel_preds.requires_grad_(), mask_feats.requires_grad_()


def _loop_losses(cls_logits, kernel_preds, mask_feats, gt: GroundTruth) -> tuple[torch.Tensor, torch.Tensor]:
    """Straightforward losses from the reference targets: one dynamic convolution per pair."""
    ref = reference_targets(*gt, **KW, with_masks=True)
    num_pos = sum(len(level.pos_cells) for levels in ref for level in levels)
    focal = torch.zeros(())
    dice_sum = torch.zeros(())
    for b, levels in enumerate(ref):
        labels, pairs = flatten_levels(levels, NUM_GRIDS)
        onehot = torch.nn.functional.one_hot(labels, NUM_CLASSES + 1)[:, :NUM_CLASSES].float()
        focal = focal + torchvision.ops.sigmoid_focal_loss(
            cls_logits[b], onehot, alpha=CFG.focal_alpha, gamma=CFG.focal_gamma, reduction="sum"
        )
        targets = [m for level in levels for m in level.mask_targets]
        for (cell, _), target in zip(pairs, targets, strict=True):
            logits = torch.nn.functional.conv2d(
                mask_feats[b : b + 1], kernel_preds[b, cell].view(1, EMBED, 1, 1)
            )
            p = logits.sigmoid().flatten()
            t = target.flatten().float()
            dice_sum = (
                dice_sum
                + 1
                - 2 * (p * t).sum() / ((p * p).sum() + CFG.dice_eps + (t * t).sum() + CFG.dice_eps)
            )
    loss_cls = CFG.cls_weight * focal / (num_pos + 1)
    loss_mask = CFG.dice_weight * dice_sum / max(num_pos, 1)
    return loss_cls, loss_mask


def _vectorised(cls_logits, kernel_preds, mask_feats, gt: GroundTruth, max_positives: int = 256):
    targets = build_targets(gt, **KW, max_positives=max_positives)
    return solov2_losses(cls_logits, kernel_preds, mask_feats, downsample_masks(gt.masks), targets, cfg=CFG)


def test_focal_matches_torchvision() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, 7, generator=gen) * 4
    labels = torch.randint(0, 8, (3, 50), generator=gen)  # 7 = background
    onehot = torch.nn.functional.one_hot(labels, 8)[..., :7].float()
    for alpha, gamma in ((0.25, 2.0), (0.5, 0.0), (0.9, 1.5)):
        ours = sigmoid_focal_loss(logits, labels, alpha=alpha, gamma=gamma)
        ref = torchvision.ops.sigmoid_focal_loss(logits, onehot, alpha=alpha, gamma=gamma, reduction="sum")
        torch.testing.assert_close(ours, ref)
    assert sigmoid_focal_loss(logits.half(), labels, alpha=0.25, gamma=2.0).dtype == torch.float32


def test_dice_hand_computed() -> None:
    probs = torch.tensor([[0.5, 0.5, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    targets = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0]], dtype=torch.uint8)
    out = dice_loss(probs, targets, eps=0.001)
    # row 0: 1 - 2 * 1.5 / ((1.5 + 0.001) + (2 + 0.001)); row 1: 1 - 0 / 0.002
    torch.testing.assert_close(out, torch.tensor([1 - 3.0 / 3.502, 1.0]))
    perfect = dice_loss(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 1.0]), eps=0.0)
    torch.testing.assert_close(perfect, torch.tensor(0.0))


@pytest.mark.parametrize("canvas", [(64, 96), (128, 128)])
def test_matches_loop_implementation(canvas: tuple[int, int]) -> None:
    checked_pos = 0
    for seed in range(6):
        gt = _gt(seed, canvas)
        preds = _preds(seed, 2, canvas)
        out = _vectorised(*preds, gt)
        ref_cls, ref_mask = _loop_losses(*preds, gt)
        torch.testing.assert_close(out["loss_cls"], ref_cls, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out["loss_mask"], ref_mask, rtol=1e-5, atol=1e-6)
        assert out["dropped_positives"].dtype == torch.int64 and int(out["dropped_positives"]) == 0
        assert not out["num_positives"].requires_grad and out["num_positives"].dtype == torch.float32
        checked_pos += int(out["num_positives"])
        # Gradients match too.
        g_ours = torch.autograd.grad(out["loss_cls"] + out["loss_mask"], preds)
        g_ref = torch.autograd.grad(ref_cls + ref_mask, preds)
        for a, b in zip(g_ours, g_ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert checked_pos > 50


def test_no_positive_gives_zero_mask_loss_and_finite_gradients() -> None:
    gt = _gt(0)
    gt = gt._replace(valid=torch.zeros_like(gt.valid))
    cls_logits, kernel_preds, mask_feats = _preds(0, 2, (64, 96))
    out = _vectorised(cls_logits, kernel_preds, mask_feats, gt)
    assert out["loss_mask"].item() == 0.0 and out["num_positives"].item() == 0.0
    (out["loss_cls"] + out["loss_mask"]).backward()
    for t in (cls_logits, kernel_preds, mask_feats):
        assert t.grad is not None and torch.isfinite(t.grad).all()
    assert (kernel_preds.grad == 0).all() and (mask_feats.grad == 0).all()
    ref_cls, _ = _loop_losses(cls_logits, kernel_preds, mask_feats, gt)
    torch.testing.assert_close(out["loss_cls"], ref_cls)


def test_single_positive_cell() -> None:
    masks = torch.zeros(1, 2, 64, 96, dtype=torch.uint8)
    masks[0, 0, 30:33, 44:47] = 1  # centre (31, 45), 3 x 3 box: one cell of level 0
    boxes = torch.tensor([[[44.0, 30.0, 47.0, 33.0], [0.0, 0.0, 0.0, 0.0]]])
    gt = GroundTruth(boxes, torch.tensor([[2, 0]]), masks, torch.tensor([[True, False]]))
    preds = _preds(9, 1, (64, 96))
    out = _vectorised(*preds, gt)
    assert out["num_positives"].item() == 1.0
    ref_cls, ref_mask = _loop_losses(*preds, gt)
    torch.testing.assert_close(out["loss_cls"], ref_cls)
    torch.testing.assert_close(out["loss_mask"], ref_mask)


def test_gradients_reach_kernels_and_mask_features() -> None:
    gt = _gt(3)
    cls_logits, kernel_preds, mask_feats = _preds(3, 2, (64, 96))
    out = _vectorised(cls_logits, kernel_preds, mask_feats, gt)
    assert out["num_positives"].item() > 0
    out["loss_mask"].backward()
    targets = build_targets(gt, **KW, max_positives=256)
    touched = kernel_preds.grad.abs().sum(-1) > 0  # [B, M]
    # Only positive cells get a kernel gradient; all of them do unless every target mask of the cell
    # is empty at stride 4 (a 1-pixel mask can vanish), where the dice loss is constant.
    non_empty = downsample_masks(gt.masks).flatten(2).any(-1)  # [B, N]
    expected = torch.zeros_like(targets.pos_cells)
    for b in range(2):
        for cell, n, ok in zip(
            targets.pair_cell[b], targets.pair_instance[b], targets.pair_valid[b], strict=True
        ):
            expected[b, cell] |= bool(ok) and bool(non_empty[b, n])
    assert torch.equal(touched, expected) and bool((touched <= targets.pos_cells).all())
    assert mask_feats.grad.abs().sum() > 0


def test_overflow_is_reported() -> None:
    gt = _gt(5, max_instances=12)
    preds = _preds(5, 2, (64, 96))
    out = _vectorised(*preds, gt, max_positives=4)
    targets = build_targets(gt, **KW, max_positives=4)
    assert int(out["dropped_positives"]) == int(targets.num_dropped.sum()) > 0
    assert torch.isfinite(out["loss_mask"])


def test_autocast_computes_in_float32() -> None:
    gt = _gt(2)
    preds = _preds(2, 2, (64, 96))
    ref = _vectorised(*preds, gt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _vectorised(*(p.bfloat16() for p in preds), gt)
    for key in ("loss_cls", "loss_mask"):
        assert out[key].dtype == torch.float32
        torch.testing.assert_close(out[key], ref[key], rtol=0.05, atol=0.02)


@pytest.mark.compile
def test_compiles_to_one_static_graph() -> None:
    """build_targets + solov2_losses: one graph, no break, no recompile for 0 and 7 valid instances."""
    canvas = (64, 96)
    graphs = []

    def counting_backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):
        graphs.append(gm)
        return gm.forward

    def step(boxes, labels, masks, valid, cls_logits, kernel_preds, mask_feats):
        gt = GroundTruth(boxes, labels, masks, valid)
        targets = build_targets(gt, **KW, max_positives=64)
        out = solov2_losses(cls_logits, kernel_preds, mask_feats, downsample_masks(masks), targets, cfg=CFG)
        return out["loss_cls"] + out["loss_mask"], out["num_positives"], out["dropped_positives"]

    torch._dynamo.reset()
    compiled = torch.compile(step, backend=counting_backend, fullgraph=True, dynamic=False)
    gt = _gt(11, canvas, max_instances=10)
    for count in (0, 7):
        valid = torch.zeros_like(gt.valid)
        valid[:, :count] = True
        masks = gt.masks.clone()
        masks[:, :count, 20:30, 30:50] = 1  # at least 7 non-empty masks
        batch = GroundTruth(gt.boxes, gt.labels, masks, valid)
        preds = _preds(count, 2, canvas)
        loss, num_pos, dropped = compiled(*batch, *preds)
        loss.backward()
        eager = step(*batch, *(p.detach() for p in preds))
        torch.testing.assert_close(loss, eager[0])
        assert (num_pos.item() > 0) == (count > 0) and dropped.item() >= 0
        assert all(torch.isfinite(p.grad).all() for p in preds)
    assert len(graphs) == 1
    torch._dynamo.reset()
