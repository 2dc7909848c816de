"""Static SOLOv2 post-processing against a plain dynamic reference, plus the host-side COCO helpers."""

from __future__ import annotations

import math
import operator

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from solov2.config import InferenceConfig
from solov2.postprocess import (
    encode_rle,
    encode_rle_by_runs,
    masks_to_boxes_xywh,
    matrix_nms,
    paste_masks,
    points_nms,
    predict,
    stable_descending_order,
)
from tests.trainer.reference_postprocess import ref_matrix_nms, ref_points_nms, ref_predict_single

NUM_GRIDS = (6, 4, 3)
STRIDES = (8, 16, 32)
NUM_CLASSES = 3
EMBED = 8
FEAT = (16, 16)


# ---------------------------------------------------------------------------------------------
# points_nms


def test_points_nms_hand_example() -> None:
    scores = torch.tensor([[0.1, 0.5, 0.2], [0.3, 0.4, 0.6], [0.2, 0.2, 0.1]])[None, None]
    expected = torch.tensor([[0.1, 0.5, 0.0], [0.3, 0.0, 0.6], [0.0, 0.0, 0.0]])[None, None]
    torch.testing.assert_close(points_nms(scores), expected)
    ties = torch.full((1, 2, 2, 2), 0.5)  # equal neighbours are all kept
    torch.testing.assert_close(points_nms(ties), ties)


def test_points_nms_matches_reference() -> None:
    g = torch.Generator().manual_seed(0)
    scores = (torch.rand(2, 3, 7, 7, generator=g) * 4).round() / 4  # many ties
    torch.testing.assert_close(points_nms(scores), ref_points_nms(scores))


# ---------------------------------------------------------------------------------------------
# matrix_nms


def _random_nms_inputs(g: torch.Generator, batch: int, num: int, pixels: int):
    density = torch.rand(batch, num, 1, generator=g) * 0.8 + 0.1
    masks = (torch.rand(batch, num, pixels, generator=g) < density).float()
    dup = torch.rand(batch, num, generator=g) < 0.3  # copy the previous mask: IoU 1 pairs
    for t in range(1, num):
        masks[:, t] = torch.where(dup[:, t, None], masks[:, t - 1], masks[:, t])
    labels = torch.randint(0, 3, (batch, num), generator=g)
    scores = ((torch.rand(batch, num, generator=g) * 10).round() / 10).sort(dim=1, descending=True).values
    valid = torch.rand(batch, num, generator=g) < 0.7
    # Invalid slots hold garbage: they must not matter.
    scores = torch.where(valid, scores, torch.full_like(scores, float("nan")))
    return masks, labels, scores, masks.sum(-1), valid


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_matrix_nms_matches_reference(kernel: str) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(15):
        masks, labels, scores, areas, valid = _random_nms_inputs(g, batch=3, num=12, pixels=40)
        out = matrix_nms(masks, labels, scores, areas, valid, kernel=kernel, sigma=2.0)
        assert out.shape == scores.shape and torch.isfinite(out).all()
        assert (out[~valid] == 0).all()
        for b in range(3):
            v = valid[b]
            expected = ref_matrix_nms(masks[b][v], labels[b][v], scores[b][v], kernel=kernel, sigma=2.0)
            torch.testing.assert_close(out[b][v].double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_matrix_nms_duplicates(kernel: str) -> None:
    square = torch.zeros(8, 8)
    square[2:6, 2:6] = 1
    other = torch.zeros(8, 8)
    other[0:2, 5:8] = 1
    masks = torch.stack([square, square, square, other]).flatten(1)[None]
    scores = torch.tensor([[0.9, 0.3, 0.25, 0.2]])
    valid = torch.ones(1, 4, dtype=torch.bool)
    areas = masks.sum(-1)
    same = matrix_nms(masks, torch.tensor([[1, 1, 1, 1]]), scores, areas, valid, kernel=kernel, sigma=2.0)
    factor = math.exp(-2.0) if kernel == "gaussian" else 0.0
    torch.testing.assert_close(same[0, :3], torch.tensor([0.9, 0.3 * factor, 0.25 * factor]))
    assert same[0, 1] < InferenceConfig().update_thr
    torch.testing.assert_close(same[0, 3], scores[0, 3])  # disjoint mask untouched
    diff = matrix_nms(masks, torch.tensor([[0, 1, 2, 0]]), scores, areas, valid, kernel=kernel, sigma=2.0)
    torch.testing.assert_close(diff, scores)  # different classes never decay each other


def test_matrix_nms_all_invalid_and_empty_masks() -> None:
    masks = torch.zeros(2, 5, 16)
    labels = torch.zeros(2, 5, dtype=torch.long)
    scores = torch.rand(2, 5).sort(dim=1, descending=True).values
    for valid in (torch.zeros(2, 5, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool)):
        for kernel in ("gaussian", "linear"):
            out = matrix_nms(masks, labels, scores, masks.sum(-1), valid, kernel=kernel, sigma=2.0)
            torch.testing.assert_close(out, torch.where(valid, scores, 0.0))


# ---------------------------------------------------------------------------------------------
# predict


def _head_outputs(seed: int, batch: int = 2, num_pos: int = 14, grids=NUM_GRIDS, classes=NUM_CLASSES):
    """Random head outputs with ``num_pos`` cells per image whose one class may pass score_thr.

    Mask-feature channel 0 is constant, so kernel entry 0 acts as a bias: masks range from a few
    pixels (dropped by the area filter) to most of the map. Every third positive copies the previous
    one's class and (noisy) kernel, giving near-duplicates for Matrix NMS to suppress.
    """
    g = torch.Generator().manual_seed(seed)
    cells = sum(s * s for s in grids)
    cls_logits = torch.full((batch, cells, classes), -8.0)
    kernels = torch.randn(batch, cells, EMBED, generator=g)
    kernels[..., 0] = torch.rand(batch, cells, generator=g) * 9 - 7
    for b in range(batch):
        picked = torch.randperm(cells, generator=g)[:num_pos].tolist()
        labels = torch.randint(0, classes, (num_pos,), generator=g).tolist()
        logits = (torch.rand(num_pos, generator=g) * 6 - 3).tolist()
        for i, cell in enumerate(picked):
            if i % 3 == 2:
                labels[i] = labels[i - 1]
                kernels[b, cell] = kernels[b, picked[i - 1]] + 0.2 * torch.randn(EMBED, generator=g)
            cls_logits[b, cell, labels[i]] = logits[i]
    feats = torch.randn(batch, EMBED, *FEAT, generator=g)
    feats[:, 0] = 1.0
    return cls_logits, kernels, feats


def _check_against_reference(
    cls_logits, kernels, feats, cfg: InferenceConfig, grids=NUM_GRIDS, strides=STRIDES
) -> int:
    det = predict(cls_logits, kernels, feats, num_grids=grids, strides=strides, cfg=cfg)
    batch = cls_logits.shape[0]
    k = cfg.max_per_img
    assert det.scores.shape == det.labels.shape == det.valid.shape == (batch, k)
    assert det.masks.shape == (batch, k, *feats.shape[-2:])
    assert det.labels.dtype == torch.int64 and det.valid.dtype == torch.bool
    assert all(torch.isfinite(t).all() for t in (det.scores, det.masks))
    total = 0
    for b in range(batch):
        scores, labels, masks = ref_predict_single(
            cls_logits[b], kernels[b], feats[b], num_grids=grids, strides=strides, cfg=cfg
        )
        n = len(scores)
        total += n
        assert det.valid[b].tolist() == [True] * n + [False] * (k - n)
        torch.testing.assert_close(det.scores[b, :n], scores.float(), rtol=1e-5, atol=1e-6)
        assert det.labels[b, :n].tolist() == labels.tolist()
        torch.testing.assert_close(det.masks[b, :n], masks, rtol=1e-5, atol=1e-6)
        assert (det.scores[b, n:] == 0).all() and (det.masks[b, n:] == 0).all()
    return total


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
@pytest.mark.parametrize("max_per_img", [5, 30])
def test_predict_matches_reference(kernel: str, max_per_img: int) -> None:
    cfg = InferenceConfig(nms_pre=40, max_per_img=max_per_img, kernel=kernel, update_thr=0.05)
    total = sum(_check_against_reference(*_head_outputs(seed), cfg) for seed in range(6))
    assert total > 0


def test_predict_no_candidates() -> None:
    cls_logits, kernels, feats = _head_outputs(0)
    cls_logits = torch.full_like(cls_logits, -8.0)
    det = predict(cls_logits, kernels, feats, num_grids=NUM_GRIDS, strides=STRIDES, cfg=InferenceConfig())
    assert det.valid.shape == (2, 100) and not det.valid.any()
    assert (det.scores == 0).all() and (det.masks == 0).all() and (det.labels == 0).all()


@pytest.mark.parametrize("nms_pre, max_per_img", [(100, 10), (3, 5)])
def test_predict_pads_when_fewer_candidates_than_slots(nms_pre: int, max_per_img: int) -> None:
    grids = (2,)  # M * C = 8 candidate pairs at most
    cls_logits, kernels, feats = _head_outputs(3, num_pos=8, grids=grids, classes=2)
    # Every pair above score_thr, rising with the cell index so that point NMS keeps them all, no ties.
    cls_logits = 1 + 0.5 * torch.arange(4.0)[None, :, None] + 0.1 * torch.arange(2.0).expand_as(cls_logits)
    cfg = InferenceConfig(nms_pre=nms_pre, max_per_img=max_per_img)
    det = predict(cls_logits, kernels, feats, num_grids=grids, strides=STRIDES[:1], cfg=cfg)
    assert det.scores.shape == (2, max_per_img) and det.masks.shape == (2, max_per_img, *FEAT)
    keep = min(nms_pre, 8)
    assert not det.valid[:, keep:].any() and (det.scores[:, keep:] == 0).all()
    if nms_pre >= 8:
        _check_against_reference(cls_logits, kernels, feats, cfg, grids=grids, strides=STRIDES[:1])


@pytest.mark.parametrize("distinct", [2, 5, 1000])
def test_stable_descending_order_is_a_stable_sort(distinct: int) -> None:
    # Few distinct values give many ties (as the -1 of invalid slots); the order must be torch's stable one.
    g = torch.Generator().manual_seed(distinct)
    keys = torch.randint(0, distinct, (3, 257), generator=g).float() / distinct - 0.5
    keys[:, ::7] = -1.0
    expected = torch.sort(keys, dim=1, descending=True, stable=True).indices
    assert torch.equal(stable_descending_order(keys), expected)


def test_predict_rejects_mismatched_grids() -> None:
    cls_logits, kernels, feats = _head_outputs(0)
    with pytest.raises(ValueError, match="num_grids"):
        predict(cls_logits, kernels, feats, num_grids=(5, 4, 3), strides=STRIDES, cfg=InferenceConfig())


_BANNED_METHODS = {"nonzero", "item", "tolist", "cpu", "numpy", "masked_select"}
_BANNED_FUNCTIONS = {"nonzero", "masked_select", "_local_scalar_dense", "argwhere", "nonzero_static"}


def _assert_static_graph(gm: torch.fx.GraphModule) -> None:
    for node in gm.graph.nodes:
        if node.op == "call_method":
            assert node.target not in _BANNED_METHODS, node.format_node()
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        assert name not in _BANNED_FUNCTIONS, node.format_node()
        if node.target is torch.where:
            assert len(node.args) + len(node.kwargs) == 3, node.format_node()
        if node.target is operator.getitem:  # no boolean-mask indexing
            index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
            for arg in index:
                value = arg.meta.get("example_value") if isinstance(arg, torch.fx.Node) else None
                assert not (isinstance(value, torch.Tensor) and value.dtype == torch.bool), node.format_node()


@pytest.mark.compile
def test_predict_compiles_once_without_dynamic_ops() -> None:
    torch._dynamo.reset()
    graphs: list[torch.fx.GraphModule] = []

    def backend(gm: torch.fx.GraphModule, example_inputs):
        graphs.append(gm)
        return gm.forward

    cfg = InferenceConfig(nms_pre=40, max_per_img=10)

    def run(c, k, f):
        return predict(c, k, f, num_grids=NUM_GRIDS, strides=STRIDES, cfg=cfg)

    compiled = torch.compile(run, backend=backend, fullgraph=True, dynamic=False)
    first = _head_outputs(0)
    empty = (torch.full_like(first[0], -8.0), *_head_outputs(1)[1:])
    for inputs in (first, empty):
        got, expected = compiled(*inputs), run(*inputs)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b)
    assert len(graphs) == 1
    _assert_static_graph(graphs[0])
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------
# Host-side helpers


def test_paste_masks_band_square_and_crop() -> None:
    masks = torch.zeros(3, 8, 8)
    masks[0, 2:4, :] = 1.0  # a band of feature rows 2..3: canvas rows 8..15, original rows 16..31
    masks[1, 2:4, 2:4] = 1.0  # the same square in both directions (bilinear rounds its corners)
    masks[2, 6:8, 7] = 1.0  # lies in the padding below the resized image: cropped away
    kwargs = {"image_size": (24, 28), "canvas_size": (32, 32), "mask_thr": 0.5}
    out = paste_masks(masks, original_size=(48, 56), **kwargs)
    assert out.shape == (3, 48, 56) and out.dtype == torch.bool
    band = torch.zeros(48, 56, dtype=torch.bool)
    band[16:32] = True
    assert torch.equal(out[0], band)
    assert masks_to_boxes_xywh(out[1:2]).tolist() == [[16.0, 16.0, 16.0, 16.0]]
    assert out[1, 16:32, 24].all() and out[1, 24, 16:32].all()  # the cross through its centre
    assert not out[2].any()
    assert paste_masks(masks[:0], original_size=(7, 9), **kwargs).shape == (0, 7, 9)


def test_encode_rle_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 7, 5, generator=g) > 0.5
    masks[2] = False
    rles = encode_rle(masks)
    assert len(rles) == 3
    for rle, mask in zip(rles, masks, strict=True):
        assert isinstance(rle["counts"], str) and list(rle["size"]) == [7, 5]
        assert np.array_equal(mask_util.decode(rle), mask.numpy().astype(np.uint8))
    assert encode_rle(masks[:0]) == []


def test_rle_from_run_boundaries_is_pycocotools_own() -> None:
    """The encoding evaluation uses for masks on an accelerator gives pycocotools' strings exactly."""
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(9, 13, 11, generator=g) > 0.6
    masks[0] = False  # no run of 1s
    masks[1] = True  # one run of 1s from the first pixel to the last
    masks[2] = False
    masks[2, 0, 0] = masks[2, -1, -1] = True  # the first and the last pixel
    masks[3] = False
    masks[3, :, 4:7] = True  # whole columns: runs across column ends
    yy, xx = torch.meshgrid(torch.arange(13.0), torch.arange(11.0), indexing="ij")
    masks[4] = (yy - 6) ** 2 / 25 + (xx - 5) ** 2 / 9 < 1  # a blob, as real masks are
    assert encode_rle_by_runs(masks) == encode_rle(masks)
    assert encode_rle_by_runs(masks[:0]) == []


def test_masks_to_boxes_xywh() -> None:
    masks = torch.zeros(3, 6, 8, dtype=torch.bool)
    masks[0, 2:5, 1:6] = True
    masks[1, 4, 7] = True
    boxes = masks_to_boxes_xywh(masks)
    torch.testing.assert_close(boxes, torch.tensor([[1.0, 2, 5, 3], [7, 4, 1, 1], [0, 0, 0, 0]]))
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(4, 9, 11, generator=g) > 0.9
    expected = mask_util.toBbox(encode_rle(masks))
    np.testing.assert_allclose(masks_to_boxes_xywh(masks).numpy(), expected)
