"""How many (instance, cell) positive pairs per image does the R50 1x head geometry produce?

The answer sizes ``model.targets.max_positives`` (P), the fixed pair buffer of the static training step.
Prints one JSON object: mean, p50, p99, p99.9 and max pairs per image, and the fraction of images that
would overflow P for several P.

- ``python bench/positives.py --ann instances_train2017.json``: real COCO annotations, each image
  resized to fit 1333 x 800 as in training and placed on the smallest configured canvas that holds it
  (``DataConfig``'s default canvases). Crowd annotations and boxes under 1 px are skipped and images without
  an instance dropped, as mmdetection's CocoDataset does. The centre of mass is the box centre unless
  ``--mask-com`` decodes every mask (slow: minutes).
- Without ``--ann``: a synthetic COCO-like distribution (documented in :func:`synthetic_instances`).

The pair count of an instance follows the target rules of :mod:`solov2.targets` (same float32
arithmetic) given its box and centre of mass; ``--self-check`` compares it with ``build_targets`` on
rendered masks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from machine_info import machine_info  # bench/machine_info.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "trainer")]

from solov2.config import DataConfig  # noqa: E402

NUM_GRIDS = (40, 36, 24, 16, 12)
SCALE_RANGES = ((1.0, 96.0), (48.0, 192.0), (96.0, 384.0), (192.0, 768.0), (384.0, 2048.0))
POS_SCALE = 0.2
CANVASES = DataConfig().canvases
IMG_SCALE = (1333, 800)
BUFFERS = (128, 192, 256, 384, 512)


def pairs_per_instance(center_h, center_w, box_w, box_h, height, width) -> torch.Tensor:
    """Positive pairs of each instance (all levels) from float32 ``[K]`` centres, box sizes, canvas sides."""
    center_h, center_w, box_w, box_h = (
        torch.as_tensor(v, dtype=torch.float32) for v in (center_h, center_w, box_w, box_h)
    )
    height = torch.as_tensor(height, dtype=torch.float32)
    width = torch.as_tensor(width, dtype=torch.float32)
    sqrt_area = torch.sqrt(box_w * box_h)
    pos_w, pos_h = 0.5 * box_w * POS_SCALE, 0.5 * box_h * POS_SCALE
    total = torch.zeros(center_h.shape, dtype=torch.int64)
    for num_grid, (lower, upper) in zip(NUM_GRIDS, SCALE_RANGES, strict=True):

        def cells(x: torch.Tensor, s: int = num_grid) -> torch.Tensor:
            return torch.div(x, 1.0 / s, rounding_mode="trunc").long()

        coord_h, coord_w = cells(center_h / height), cells(center_w / width)
        top = torch.maximum(cells((center_h - pos_h) / height).clamp(min=0), coord_h - 1)
        down = torch.minimum(cells((center_h + pos_h) / height).clamp(max=num_grid - 1), coord_h + 1)
        left = torch.maximum(coord_w - 1, cells((center_w - pos_w) / width).clamp(min=0))
        right = torch.minimum(cells((center_w + pos_w) / width).clamp(max=num_grid - 1), coord_w + 1)
        hit = (sqrt_area >= lower) & (sqrt_area <= upper)
        total += hit * (down - top + 1).clamp(min=0) * (right - left + 1).clamp(min=0)
    return total


def fit(height: float, width: float) -> tuple[float, tuple[int, int]]:
    """Resize factor to fit inside IMG_SCALE (long, short) and the smallest configured canvas that holds it."""
    scale = min(IMG_SCALE[0] / max(height, width), IMG_SCALE[1] / min(height, width))
    new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
    fitting = [c for c in CANVASES if c[0] >= new_h and c[1] >= new_w]
    return scale, min(fitting, key=lambda c: c[0] * c[1])


def _to_canvas(inst: np.ndarray, scale: float) -> np.ndarray:
    """Continuous ``(cy, cx, w, h)`` at original size -> resized, centre as a pixel index (as a mask's COM)."""
    out = inst * scale
    out[:, :2] -= 0.5
    return out


def synthetic_instances(
    num_images: int, seed: int, shape: float = 1.3
) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """COCO-like images at training scale: per image ``([K, 4] (cy, cx, w, h) on the canvas, canvas)``.

    The centre of mass ``(cy, cx)`` is in pixel indices on the canvas, as in the target rules.

    Assumptions (COCO train2017 statistics, approximately):

    - image: long side 640; short side 480 for 60% of images, else uniform in [360, 640]; 75% landscape;
    - instances per image: negative binomial with mean 7.3 and ``shape`` 1.3 (sd ~7; a smaller shape gives
      a heavier tail), at least 1, at most 93 (the largest non-crowd count in COCO train is ~90);
    - object size at original resolution: sqrt(mask area) log-normal with P(< 32) = 0.41 and
      P(< 96) = 0.75 (41% small, 34% medium, 24% large); the box area is the mask area divided by a
      fill ratio uniform in [0.45, 0.85]; box aspect ratio w / h log-normal, sigma 0.6; boxes are clipped
      to the image;
    - the centre of mass lies within +-10% of the box size of the box centre.
    """
    rng = np.random.default_rng(seed)
    z41, z75 = -0.2275, 0.6745  # standard normal quantiles of 0.41 and 0.75
    sigma = (math.log(96) - math.log(32)) / (z75 - z41)
    mu = math.log(32) - z41 * sigma
    out = []
    counts = np.clip(rng.negative_binomial(shape, shape / (shape + 7.3), size=num_images), 1, 93)
    for count in counts:
        short = 480.0 if rng.random() < 0.6 else rng.uniform(360, 640)
        h, w = (short, 640.0) if rng.random() < 0.75 else (640.0, short)
        mask_side = np.exp(rng.normal(mu, sigma, count))
        box_area = mask_side**2 / rng.uniform(0.45, 0.85, count)
        aspect = np.exp(rng.normal(0.0, 0.6, count))
        bw = np.minimum(np.sqrt(box_area * aspect), w)
        bh = np.minimum(np.sqrt(box_area / aspect), h)
        cx = rng.uniform(bw / 2, w - bw / 2)
        cy = rng.uniform(bh / 2, h - bh / 2)
        cx = np.clip(cx + rng.uniform(-0.1, 0.1, count) * bw, 0, w - 1)
        cy = np.clip(cy + rng.uniform(-0.1, 0.1, count) * bh, 0, h - 1)
        scale, canvas = fit(h, w)
        out.append((_to_canvas(np.stack([cy, cx, bw, bh], 1), scale), canvas))
    return out


def coco_instances(ann_file: str, mask_com: bool) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """Per image of a COCO annotation file: ``([K, 4] (cy, cx, w, h) on the canvas, canvas)``.

    The centre of mass is in pixel indices (a pixel's centre is its index), as in the target rules.
    """
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(sys.stderr):  # pycocotools prints progress; stdout is the JSON
        coco = COCO(ann_file)
    out = []
    for img_id in coco.getImgIds():
        info = coco.imgs[img_id]
        h, w = float(info["height"]), float(info["width"])
        if min(h, w) < 32:
            continue
        rows = []
        for ann in coco.imgToAnns.get(img_id, []):
            x, y, bw, bh = ann["bbox"]
            if ann.get("iscrowd", 0) or ann.get("area", 1) <= 0 or bw < 1 or bh < 1:
                continue
            cy, cx = y + bh / 2, x + bw / 2
            if mask_com:
                m = coco.annToMask(ann)
                if m.sum() == 0:
                    continue
                ys, xs = np.nonzero(m)
                cy, cx = ys.mean() + 0.5, xs.mean() + 0.5  # pixel indices -> continuous coordinates
            rows.append((cy, cx, bw, bh))
        if not rows:
            continue
        scale, canvas = fit(h, w)
        out.append((_to_canvas(np.asarray(rows, dtype=np.float64), scale), canvas))
    return out


def count_pairs(images: list[tuple[np.ndarray, tuple[int, int]]]) -> np.ndarray:
    """Pairs per image, computed for all instances at once."""
    inst = np.concatenate([a for a, _ in images])
    canvas = np.concatenate([np.tile(c, (len(a), 1)) for a, c in images])
    per_inst = pairs_per_instance(inst[:, 0], inst[:, 1], inst[:, 2], inst[:, 3], canvas[:, 0], canvas[:, 1])
    image_index = np.repeat(np.arange(len(images)), [len(a) for a, _ in images])
    return np.bincount(image_index, weights=per_inst.numpy(), minlength=len(images)).astype(np.int64)


def self_check(seed: int = 0, num_images: int = 4) -> int:
    """Compare :func:`pairs_per_instance` with ``build_targets`` on rendered rectangles; return mismatches."""
    from solov2.structures import GroundTruth
    from solov2.targets import build_targets

    mismatches = 0
    for inst, (height, width) in synthetic_instances(num_images, seed):
        inst = inst[:20]
        k = len(inst)
        masks = torch.zeros(1, k, height, width, dtype=torch.uint8)
        boxes = torch.zeros(1, k, 4)
        for n, (cy, cx, bw, bh) in enumerate(inst):
            x1, y1 = max(int(cx - bw / 2), 0), max(int(cy - bh / 2), 0)
            x2, y2 = min(max(int(cx + bw / 2), x1 + 1), width), min(max(int(cy + bh / 2), y1 + 1), height)
            masks[0, n, y1:y2, x1:x2] = 1
            boxes[0, n] = torch.tensor([x1, y1, x2, y2], dtype=torch.float32)
        gt = GroundTruth(
            boxes, torch.zeros(1, k, dtype=torch.int64), masks, torch.ones(1, k, dtype=torch.bool)
        )
        t = build_targets(
            gt,
            num_grids=NUM_GRIDS,
            scale_ranges=SCALE_RANGES,
            pos_scale=POS_SCALE,
            num_classes=80,
            max_positives=2048,
        )
        # Centre of mass of a filled rectangle: its centre, (y1 + y2 - 1) / 2 in pixel indices.
        b = boxes[0]
        expected = pairs_per_instance(
            (b[:, 1] + b[:, 3] - 1) / 2,
            (b[:, 0] + b[:, 2] - 1) / 2,
            b[:, 2] - b[:, 0],
            b[:, 3] - b[:, 1],
            height,
            width,
        )
        mismatches += int(t.pair_valid.sum()) != int(expected.sum())
    return mismatches


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ann", help="COCO instances_*.json; default: a synthetic COCO-like distribution")
    parser.add_argument("--mask-com", action="store_true", help="decode masks for the centre of mass (slow)")
    parser.add_argument(
        "--images", type=int, default=118_000, help="synthetic images (default: COCO train size)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--shape", type=float, default=1.3, help="synthetic: negative-binomial shape of the count"
    )
    parser.add_argument(
        "--self-check", action="store_true", help="also check the counter against build_targets"
    )
    args = parser.parse_args()

    images = (
        coco_instances(args.ann, args.mask_com)
        if args.ann
        else synthetic_instances(args.images, args.seed, args.shape)
    )
    pairs = count_pairs(images)
    counts = np.array([len(a) for a, _ in images])
    result = {
        "source": args.ann or f"synthetic COCO-like (negative-binomial shape {args.shape})",
        "images": len(images),
        "instances_per_image": {
            "mean": round(float(counts.mean()), 2),
            "max": int(counts.max()),
            "over_100": int((counts > 100).sum()),
        },
        "pairs_per_instance_mean": round(float(pairs.sum() / counts.sum()), 2),
        "pairs_per_image": {
            "mean": round(float(pairs.mean()), 1),
            "p50": float(np.percentile(pairs, 50)),
            "p99": float(np.percentile(pairs, 99)),
            "p99.9": float(np.percentile(pairs, 99.9)),
            "max": int(pairs.max()),
        },
        "overflow_fraction": {str(p): float((pairs > p).mean()) for p in BUFFERS},
        "dropped_pair_fraction": {
            str(p): float(np.clip(pairs - p, 0, None).sum() / pairs.sum()) for p in BUFFERS
        },
        "machine": machine_info(),
    }
    if args.self_check:
        result["self_check_mismatches"] = self_check()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
