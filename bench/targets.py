"""Benchmark the static-shape SOLOv2 targets and losses on CPU against the per-instance reference loop.

``python bench/targets.py`` prints one JSON object. Setting: 2 images x 20 instances on an 800 x 1344
canvas, R50 1x head geometry (num_grids 40/36/24/16/12, scale ranges (1, 96) ... (384, 2048), pos_scale
0.2, 80 classes, max_positives 256), COCO-like instance sizes (bench/positives.py) drawn as ellipses.

- ``targets_ms``: vectorised ``build_targets`` + ``downsample_masks`` on full-resolution ground truth
  (``vectorised``), on the loaders' compact ground truth (``compact``: stride-4 masks, centres and
  counts computed by the loader, so nothing of it is left for the step), and the reference loop
  (``tests/trainer/reference_targets.py``, with its mask targets), median of several runs;
  ``compact_same_targets`` checks both forms give identical targets;
- ``loss_forward_ms`` / ``loss_forward_backward_ms``: targets + ``solov2_losses`` from the compact
  ground truth (what a training step does) with E = 256 mask features at 200 x 336, random category
  logits and kernels (the dynamic convolution included); ``..._full_ground_truth`` the same from
  full-resolution masks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from machine_info import machine_info  # bench/machine_info.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "trainer"), str(ROOT / "bench")]

from tests.trainer.reference_targets import reference_targets  # noqa: E402

from positives import NUM_GRIDS, POS_SCALE, SCALE_RANGES, synthetic_instances  # noqa: E402
from solov2.config import LossConfig  # noqa: E402
from solov2.losses import solov2_losses  # noqa: E402
from solov2.structures import GroundTruth  # noqa: E402
from solov2.targets import build_targets, compact_ground_truth, downsample_masks  # noqa: E402

CANVAS = (800, 1344)
NUM_CLASSES = 80
MAX_POSITIVES = 256
EMBED = 256


def make_ground_truth(batch: int, num_inst: int, seed: int) -> GroundTruth:
    """COCO-like ellipses on the canvas; boxes are the masks' tight boxes."""
    height, width = CANVAS
    images = [img for img, canvas in synthetic_instances(20 * batch, seed) if canvas == CANVAS]
    gen = torch.Generator().manual_seed(seed)
    ys = torch.arange(height, dtype=torch.float32)[:, None]
    xs = torch.arange(width, dtype=torch.float32)[None, :]
    masks = torch.zeros(batch, num_inst, height, width, dtype=torch.uint8)
    boxes = torch.zeros(batch, num_inst, 4)
    pool = torch.tensor([row for img in images for row in img.tolist()])
    for b in range(batch):
        pick = torch.randint(0, len(pool), (num_inst,), generator=gen)
        for n, (cy, cx, bw, bh) in enumerate(pool[pick].tolist()):
            cy, cx = min(max(cy, 0.0), height - 1.0), min(max(cx, 0.0), width - 1.0)
            ry, rx = max(bh / 2, 0.5), max(bw / 2, 0.5)
            mask = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
            masks[b, n] = mask
            rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
            boxes[b, n] = torch.tensor([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=torch.float32)
    labels = torch.randint(0, NUM_CLASSES, (batch, num_inst), generator=gen)
    return GroundTruth(boxes, labels, masks, torch.ones(batch, num_inst, dtype=torch.bool))


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 2)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--reference-repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    gt = make_ground_truth(2, 20, args.seed)
    kw = dict(num_grids=NUM_GRIDS, scale_ranges=SCALE_RANGES, pos_scale=POS_SCALE, num_classes=NUM_CLASSES)
    num_cells = sum(s * s for s in NUM_GRIDS)
    h, w = CANVAS[0] // 4, CANVAS[1] // 4

    def vectorised() -> tuple[object, torch.Tensor]:
        return build_targets(gt, **kw, max_positives=MAX_POSITIVES), downsample_masks(gt.masks)

    compact_gt = compact_ground_truth(gt)

    def compact() -> tuple[object, torch.Tensor]:
        return build_targets(compact_gt, **kw, max_positives=MAX_POSITIVES), compact_gt.masks

    def reference() -> object:
        return reference_targets(*gt, **kw, with_masks=True)

    targets, _ = vectorised()
    ref = reference()
    pairs_ref = sum(len(level.pairs) for levels in ref for level in levels)

    gen = torch.Generator().manual_seed(args.seed)
    cls_logits = torch.randn(2, num_cells, NUM_CLASSES, generator=gen) - 4
    kernel_preds = torch.randn(2, num_cells, EMBED, generator=gen) * 0.05
    mask_feats = torch.randn(2, EMBED, h, w, generator=gen)
    cfg = LossConfig()

    def forward(grad: bool, targets_fn=compact) -> dict[str, torch.Tensor]:
        preds = [t.detach().requires_grad_(grad) for t in (cls_logits, kernel_preds, mask_feats)]
        t, small = targets_fn()
        return solov2_losses(*preds, small, t, cfg=cfg)

    def forward_backward(targets_fn=compact) -> None:
        out = forward(True, targets_fn)
        (out["loss_cls"] + out["loss_mask"]).backward()

    with torch.no_grad():
        loss_fwd = median_ms(lambda: forward(False), args.repeats)
        loss_fwd_full = median_ms(lambda: forward(False, vectorised), args.repeats)
    t_vec = median_ms(vectorised, args.repeats)
    t_compact = median_ms(compact, args.repeats)
    same = all(torch.equal(a, b) for a, b in zip(targets, compact()[0], strict=True))
    t_ref = median_ms(reference, args.reference_repeats, warmup=0)
    losses = forward(False)
    result = {
        "machine": machine_info(),
        "setting": {
            "batch": 2,
            "instances": 20,
            "canvas": list(CANVAS),
            "num_grids": list(NUM_GRIDS),
            "max_positives": MAX_POSITIVES,
            "mask_feats": [2, EMBED, h, w],
        },
        "pairs": int(targets.pair_valid.sum()),
        "pairs_reference": pairs_ref,
        "positive_cells": int(targets.pos_cells.sum()),
        "dropped": int(targets.num_dropped.sum()),
        "targets_ms": {
            "vectorised": t_vec,
            "compact": t_compact,
            "reference": t_ref,
            "speedup": round(t_ref / t_vec, 1),
        },
        "compact_same_targets": same,
        "loss_forward_ms": loss_fwd,
        "loss_forward_backward_ms": median_ms(forward_backward, args.repeats),
        "loss_forward_ms_full_ground_truth": loss_fwd_full,
        "loss_forward_backward_ms_full_ground_truth": median_ms(
            lambda: forward_backward(vectorised), args.repeats
        ),
        "losses": {k: round(float(v), 4) for k, v in losses.items()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
