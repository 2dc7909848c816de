"""The static-shape SOLOv2 targets against the slow per-instance reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from solov2.structures import GroundTruth
from solov2.targets import LevelGeometry, Targets, build_targets, compact_ground_truth, downsample_masks
from tests.trainer.reference_targets import (
    flatten_levels,
    random_ground_truth,
    reference_downsample,
    reference_targets,
)

from .host_reads import DispatchedOps

NUM_GRIDS = (12, 10, 8, 6, 4)
SCALE_RANGES = ((1.0, 12.0), (6.0, 24.0), (12.0, 48.0), (24.0, 96.0), (48.0, 256.0))
BOUNDS = sorted({v for r in SCALE_RANGES for v in r if v < 128})
NUM_CLASSES = 5
KW = dict(num_grids=NUM_GRIDS, scale_ranges=SCALE_RANGES, pos_scale=0.2, num_classes=NUM_CLASSES)
NUM_CELLS = sum(s * s for s in NUM_GRIDS)


def _gt(seed: int, canvas: tuple[int, int], max_instances: int = 8, batch: int = 2) -> GroundTruth:
    gen = torch.Generator().manual_seed(seed)
    parts = random_ground_truth(
        gen,
        batch=batch,
        max_instances=max_instances,
        canvas=canvas,
        num_classes=NUM_CLASSES,
        boundary_sizes=BOUNDS,
        num_grids=NUM_GRIDS,
    )
    return GroundTruth(*parts)


def _pairs(t: Targets, b: int) -> list[tuple[int, int]]:
    k = int(t.pair_valid[b].sum())
    return list(zip(t.pair_cell[b, :k].tolist(), t.pair_instance[b, :k].tolist(), strict=True))


def _check_against_reference(gt: GroundTruth, max_positives: int) -> int:
    """Assert equality with the reference for every image; return the number of pairs checked."""
    t = build_targets(gt, **KW, max_positives=max_positives)
    batch = gt.labels.shape[0]
    assert t.labels.shape == t.pos_cells.shape == (batch, NUM_CELLS)
    assert t.pair_cell.shape == t.pair_instance.shape == t.pair_valid.shape == (batch, max_positives)
    assert t.labels.dtype == t.pair_cell.dtype == t.pair_instance.dtype == t.num_dropped.dtype == torch.int64
    small = downsample_masks(gt.masks)
    ref = reference_targets(*gt, **KW, with_masks=True)
    checked = 0
    for b in range(batch):
        ref_labels, ref_pairs = flatten_levels(ref[b], NUM_GRIDS)
        assert torch.equal(t.labels[b], ref_labels)
        assert torch.equal(t.pos_cells[b], ref_labels != NUM_CLASSES)
        offsets = [0]
        for s in NUM_GRIDS:
            offsets.append(offsets[-1] + s * s)
        ref_pos = {offsets[i] + c for i, level in enumerate(ref[b]) for c in level.pos_cells}
        assert set(t.pos_cells[b].nonzero()[:, 0].tolist()) == ref_pos
        kept = min(len(ref_pairs), max_positives)
        assert int(t.num_dropped[b]) == len(ref_pairs) - kept
        # The documented order (level, instance, window position) is the reference's order.
        assert _pairs(t, b) == ref_pairs[:kept]
        assert not t.pair_valid[b, kept:].any()
        assert (t.pair_cell[b, kept:] == 0).all() and (t.pair_instance[b, kept:] == 0).all()
        ref_masks = [m for level in ref[b] for m in level.mask_targets]
        for k in range(kept):
            assert torch.equal(small[b, int(t.pair_instance[b, k])], ref_masks[k])
        checked += kept
    return checked


@pytest.mark.parametrize("canvas", [(64, 96), (128, 128), (96, 64)])
def test_matches_reference_on_random_ground_truth(canvas: tuple[int, int]) -> None:
    pairs = 0
    for seed in range(200):
        pairs += _check_against_reference(_gt(seed, canvas), max_positives=512)
    assert pairs > 1000  # the cases are not trivially empty


def test_hand_made_cases() -> None:
    """Nested instances with one centre, a 1-pixel mask, the whole canvas, empty masks and padding."""
    h, w = 64, 96
    masks = torch.zeros(1, 7, h, w, dtype=torch.uint8)
    masks[0, 0, 10:40, 20:60] = 1  # outer
    masks[0, 1, 20:30, 30:50] = 1  # nested, same centre (24.5, 39.5), later index wins the cell
    masks[0, 2, 63, 95] = 1  # 1 pixel in the bottom-right corner
    masks[0, 3] = 1  # whole canvas
    masks[0, 5, 0:8, 0:8] = 1  # padding entry with a mask: ignored
    boxes = torch.tensor(
        [
            [
                [20, 10, 60, 40],
                [30, 20, 50, 30],
                [95, 63, 96, 64],
                [0, 0, 96, 64],
                [0, 0, 8, 8],
                [0, 0, 8, 8],
                [0, 0, 0, 0],
            ]
        ],
        dtype=torch.float32,
    )
    labels = torch.tensor([[1, 2, 3, 4, 0, 0, 0]])
    valid = torch.tensor([[True, True, True, True, True, False, False]])  # 4: valid, empty mask
    gt = GroundTruth(boxes, labels, masks, valid)
    assert _check_against_reference(gt, max_positives=128) > 0
    t = build_targets(gt, **KW, max_positives=128)
    assert 4 not in t.pair_instance[0, t.pair_valid[0]].tolist()
    assert 5 not in t.pair_instance[0, t.pair_valid[0]].tolist()
    # The 1-pixel instance (sqrt area 1) sits in the last cell of level 0 only.
    assert 2 in t.pair_instance[0, t.pair_valid[0]].tolist()
    assert int(t.labels[0, NUM_GRIDS[0] ** 2 - 1]) == 3


def test_float32_cell_arithmetic_matches_mmdetection() -> None:
    """A centre of mass exactly on a cell boundary: float32 ``(40 / 96) / (1 / 12)`` truncates to 4, not 5.

    The box (90 x 1.5, sqrt area 11.6: levels 0 and 1) is much wider than the one-pixel mask, so the
    centre box spans columns 3..6 of the 12 x 12 grid and the 3 x 3 window picks 3..5 around column 4.
    """
    masks = torch.zeros(1, 2, 96, 96, dtype=torch.uint8)
    masks[0, 0, 40, 40] = 1
    boxes = torch.tensor([[[0.0, 39.5, 90.0, 41.0], [0.0, 0.0, 0.0, 0.0]]])
    gt = GroundTruth(boxes, torch.tensor([[3, 0]]), masks, torch.tensor([[True, False]]))
    _check_against_reference(gt, max_positives=64)
    t = build_targets(gt, **KW, max_positives=64)
    level0 = t.pos_cells[0, : NUM_GRIDS[0] ** 2].view(NUM_GRIDS[0], NUM_GRIDS[0]).nonzero().tolist()
    assert level0 == [[4, 3], [4, 4], [4, 5], [5, 3], [5, 4], [5, 5]]


def test_centre_of_mass_uses_exact_integer_sums() -> None:
    """On a large canvas float32 accumulation would round differently from mmdetection's int64 sums."""
    from solov2.targets import _centre_of_mass

    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(1, 3, 800, 1344, generator=gen) < torch.tensor([0.9, 0.5, 0.01]).view(1, 3, 1, 1)
    masks = masks.to(torch.uint8)
    center_h, center_w, count = _centre_of_mass(masks)
    for n in range(3):
        m = masks[0, n].bool()
        norm = m.sum().float().clamp(min=1e-6)
        ref_h = (m * torch.arange(800)[:, None]).sum() / norm
        ref_w = (m * torch.arange(1344)).sum() / norm
        assert center_h[0, n].item() == ref_h.item() and center_w[0, n].item() == ref_w.item()
        assert int(count[0, n]) == int(m.sum())


def test_no_instances() -> None:
    gt = GroundTruth(
        torch.zeros(2, 3, 4),
        torch.zeros(2, 3, dtype=torch.int64),
        torch.zeros(2, 3, 64, 64, dtype=torch.uint8),
        torch.zeros(2, 3, dtype=torch.bool),
    )
    t = build_targets(gt, **KW, max_positives=16)
    assert (t.labels == NUM_CLASSES).all() and not t.pos_cells.any() and not t.pair_valid.any()
    assert (t.num_dropped == 0).all() and (t.pair_cell == 0).all() and (t.pair_instance == 0).all()


def test_overflow_is_counted() -> None:
    for seed in range(10):
        gt = _gt(1000 + seed, (64, 96), max_instances=12)
        total = [len(flatten_levels(levels, NUM_GRIDS)[1]) for levels in reference_targets(*gt, **KW)]
        small_p = max(1, min(total) // 2) if min(total) > 1 else 3
        _check_against_reference(gt, max_positives=small_p)  # kept pairs are the reference's prefix
        t = build_targets(gt, **KW, max_positives=small_p)
        assert t.num_dropped.tolist() == [max(n - small_p, 0) for n in total]
        assert t.pair_valid.sum(1).tolist() == [min(n, small_p) for n in total]


def test_bool_masks_give_the_same_targets() -> None:
    gt = _gt(7, (64, 96))
    a = build_targets(gt, **KW, max_positives=256)
    b = build_targets(gt._replace(masks=gt.masks.bool()), **KW, max_positives=256)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("stride", [2, 4, 6, 8])
def test_downsample_masks_matches_bilinear_threshold(stride: int) -> None:
    gen = torch.Generator().manual_seed(stride)
    h, w = (60, 96) if stride == 6 else (64, 96)  # stride 6 takes the generic (non-word) path
    masks = (torch.rand(3, 4, h, w, generator=gen) < torch.rand(3, 4, 1, 1, generator=gen)).to(torch.uint8)
    masks[0, 0] = 0
    masks[0, 1, 10:37, 5:50] = 1
    masks[0, 2] = 1
    out = downsample_masks(masks, stride)
    assert out.shape == (3, 4, h // stride, w // stride) and out.dtype == torch.uint8
    ref = F.interpolate(masks.float(), scale_factor=1 / stride, mode="bilinear", align_corners=False) >= 0.5
    assert torch.equal(out, ref.to(torch.uint8))
    assert torch.equal(out[1, 2], reference_downsample(masks[1, 2], stride))
    as_bool = downsample_masks(masks.bool(), stride)
    assert as_bool.dtype == torch.bool and torch.equal(as_bool, out.bool())


@pytest.mark.parametrize("shape", [(3, 40, 36), (2, 514, 4096), (1, 256, 2056), (2, 64, 96)])
def test_row_and_column_counts_are_exact(shape: tuple[int, int, int]) -> None:
    """Word-wise counting (no carry between byte lanes) on full masks and odd sizes, vs plain sums."""
    from solov2.targets import _row_col_counts

    gen = torch.Generator().manual_seed(sum(shape))
    masks = (torch.rand(*shape, generator=gen) < 0.5).to(torch.uint8)
    masks[0] = 1  # every lane at its maximum
    for m in (masks, masks.bool()):
        rows, cols = _row_col_counts(m)
        assert torch.equal(rows, masks.sum(-1)) and torch.equal(cols, masks.sum(-2))


def test_downsample_masks_rejects_bad_strides() -> None:
    masks = torch.zeros(2, 64, 96, dtype=torch.uint8)
    for stride in (0, 3, 5):
        with pytest.raises(ValueError, match="even"):
            downsample_masks(masks, stride)
    with pytest.raises(ValueError, match="multiple"):
        downsample_masks(torch.zeros(2, 60, 96, dtype=torch.uint8), 8)


def test_rejects_mismatched_levels() -> None:
    gt = _gt(0, (64, 64))
    with pytest.raises(ValueError, match="levels"):
        build_targets(
            gt, num_grids=(4, 2), scale_ranges=((1, 2),), pos_scale=0.2, num_classes=5, max_positives=4
        )


def test_device_geometry_gives_the_same_targets_and_must_match_the_levels() -> None:
    gt = _gt(3, (64, 96))
    geometry = LevelGeometry(NUM_GRIDS, SCALE_RANGES)
    assert not geometry.state_dict()  # buffers that checkpoints do not hold
    a = build_targets(gt, **KW, max_positives=64)
    b = build_targets(gt, **KW, max_positives=64, geometry=geometry)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="geometry is for num_grids"):
        build_targets(gt, **{**KW, "num_grids": (12, 10, 8, 6, 2)}, max_positives=64, geometry=geometry)


def test_dispatched_operators_do_not_grow_with_the_levels() -> None:
    """All levels are assigned at once: a level adds one division (its cell size), not a loop body,
    which matters where each operator is a kernel launch the host pays for."""

    def dispatched(levels: int) -> int:
        kw = {**KW, "num_grids": NUM_GRIDS[:levels], "scale_ranges": SCALE_RANGES[:levels]}
        geometry = LevelGeometry(kw["num_grids"], kw["scale_ranges"])
        gt = compact_ground_truth(_gt(0, (64, 96)))
        with DispatchedOps() as ops:
            build_targets(gt, **kw, max_positives=64, geometry=geometry)
        return ops.total

    two, five = dispatched(2), dispatched(5)
    assert five - two <= 3 and five < 100, (two, five)
