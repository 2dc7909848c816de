"""Padding waste of the fixed canvases, and better canvases for a size distribution.

    python bench/padding_waste.py                                  # a COCO-like size distribution
    python bench/padding_waste.py --ann instances_train2017.json   # the sizes of a real annotation file
    python bench/padding_waste.py --canvases 800x1088 1088x800 800x1344 --max-canvases 4

Each image is rescaled to fit ``--img-scale`` (as in training), goes to the smallest canvas that holds
it (``solov2.data.buckets.choose_canvas``), and the waste is the share of canvas pixels that are padding
(= the share of the backbone's work spent on padding). Proposed canvas sets (3..``--max-canvases``
canvases, sides multiples of ``--divisor``) are found by a greedy search plus single swaps that minimise
the total canvas area, under the constraint that every image fits some canvas without shrinking.
``multiscale_waste`` repeats the count for the 3x recipe's short sides (640..800 in steps of 32, scaled
by ``min(img_scale) / 800``), canvases still chosen at the nominal scale (what the bucket sampler does).
Prints one JSON object.

The COCO-like distribution (an assumption, not measured here): COCO images have a 640-pixel long side
almost always; we draw (width x height) 40% 640x480, 14% 480x640, 13% 640x427, 5% 427x640, 5% 640x360,
4% 640x640 and 19% with a long side of 640 and an aspect ratio uniform in [1, 2] (70% landscape); 20000
images, seed 0. Check against the real file with ``--ann``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))

from solov2.config import DataConfig
from solov2.data.buckets import choose_canvas
from solov2.data.transforms import fit_size

DEFAULT_CANVASES = list(DataConfig().canvases)
MULTISCALE_SHORT_SIDES = (640, 672, 704, 736, 768, 800)


def coco_like_sizes(n: int = 20000, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    fixed = [
        ((480, 640), 0.40),
        ((640, 480), 0.14),
        ((427, 640), 0.13),
        ((640, 427), 0.05),
        ((360, 640), 0.05),
    ]
    fixed += [((640, 640), 0.04)]
    probs = [p for _, p in fixed] + [1 - sum(p for _, p in fixed)]
    kinds = rng.choice(len(probs), size=n, p=probs)
    sizes = []
    for k in kinds:
        if k < len(fixed):
            sizes.append(fixed[k][0])
            continue
        short = round(640 / rng.uniform(1.0, 2.0))
        sizes.append((short, 640) if rng.random() < 0.7 else (640, short))
    return sizes


def sizes_from_annotations(path: Path) -> list[tuple[int, int]]:
    data = json.loads(path.read_text())
    return [(int(i["height"]), int(i["width"])) for i in data["images"]]


def evaluate(resized: list[tuple[int, int]], canvases: list[tuple[int, int]]) -> dict:
    """Waste and per-canvas use when each (already resized) image goes to ``choose_canvas``."""
    used = [0] * len(canvases)
    image_px = [0] * len(canvases)
    shrunk = 0
    for h, w in resized:
        k = choose_canvas(h, w, canvases)
        ch, cw = canvases[k]
        if h > ch or w > cw:
            shrunk += 1
            f = min(ch / h, cw / w)
            h, w = int(h * f + 0.5), int(w * f + 0.5)
        used[k] += 1
        image_px[k] += h * w
    canvas_px = [used[k] * canvases[k][0] * canvases[k][1] for k in range(len(canvases))]
    return {
        "canvases": [list(c) for c in canvases],
        "waste": round(1 - sum(image_px) / sum(canvas_px), 4),
        "mean_canvas_pixels": round(sum(canvas_px) / len(resized)),
        "per_canvas": [
            {
                "canvas": list(c),
                "images": round(used[k] / len(resized), 4),
                "waste": round(1 - image_px[k] / canvas_px[k], 4) if used[k] else None,
            }
            for k, c in enumerate(canvases)
        ],
        "shrunk_images": round(shrunk / len(resized), 4),
    }


def search(
    resized: list[tuple[int, int]], max_canvases: int, divisor: int
) -> dict[int, list[tuple[int, int]]]:
    """Canvas sets of 2..max_canvases minimising total canvas area; every image fits without shrinking."""
    up = lambda v: int(math.ceil(v / divisor) * divisor)  # noqa: E731
    sizes, weights = np.unique(np.array(resized), axis=0, return_counts=True)
    cands = sorted({(up(h), up(w)) for h, w in sizes})
    c = np.array(cands)
    fits = (sizes[:, None, 0] <= c[None, :, 0]) & (sizes[:, None, 1] <= c[None, :, 1])  # [U, C]
    cost = np.where(fits, (c[:, 0] * c[:, 1])[None, :].astype(float), np.inf)  # [U, C]

    def total(chosen: list[int]) -> float:
        return float((cost[:, chosen].min(1) * weights).sum())

    land = sizes[:, 0] <= sizes[:, 1]
    start = []
    for mask in (land, ~land):
        if mask.any():
            need = (up(sizes[mask, 0].max()), up(sizes[mask, 1].max()))
            start.append(cands.index(need))
    chosen = sorted(set(start))
    result = {}
    while len(chosen) < max_canvases:
        best = cost[:, chosen].min(1)
        gains = ((best[:, None] - np.minimum(best[:, None], cost)) * weights[:, None]).sum(0)
        gains[chosen] = -1
        if gains.max() <= 0:
            break
        chosen = [*chosen, int(gains.argmax())]
        improved = True
        while improved:  # single swaps that keep every image covered and lower the total
            improved = False
            for i in range(len(chosen)):
                for j in range(len(cands)):
                    if j in chosen:
                        continue
                    trial = [*chosen[:i], j, *chosen[i + 1 :]]
                    if total(trial) < total(chosen) - 1e-6:
                        chosen, improved = trial, True
        result[len(chosen)] = sorted(
            (cands[k] for k in chosen), key=lambda hw: (hw[0] > hw[1], hw[0] * hw[1])
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--ann", type=Path, help="a COCO annotation file (default: the COCO-like distribution)"
    )
    parser.add_argument("--img-scale", type=int, nargs=2, default=(1333, 800))
    parser.add_argument("--canvases", nargs="+", help="HxW canvases to compare (default: DataConfig's)")
    parser.add_argument("--max-canvases", type=int, default=5)
    parser.add_argument("--divisor", type=int, default=32)
    args = parser.parse_args()

    sizes = sizes_from_annotations(args.ann) if args.ann else coco_like_sizes()
    canvases = (
        [tuple(int(v) for v in c.split("x")) for c in args.canvases] if args.canvases else DEFAULT_CANVASES
    )
    resized = [fit_size(h, w, args.img_scale) for h, w in sizes]
    proposed = search(resized, args.max_canvases, args.divisor)

    short_sides = [round(s * min(args.img_scale) / 800) for s in MULTISCALE_SHORT_SIDES]

    def multiscale(cs: list[tuple[int, int]]) -> float:
        """Waste averaged over the 3x short sides, canvases assigned at the nominal scale."""
        canvas_px = image_px = 0
        for (h, w), (rh, rw) in zip(sizes, resized, strict=True):
            ch, cw = cs[choose_canvas(rh, rw, cs)]
            for short in short_sides:
                sh, sw = fit_size(h, w, (max(args.img_scale), short))
                f = min(1.0, ch / sh, cw / sw)
                image_px += int(sh * f + 0.5) * int(sw * f + 0.5)
                canvas_px += ch * cw
        return round(1 - image_px / canvas_px, 4)

    base = evaluate(resized, canvases)
    base["multiscale_waste"] = multiscale(canvases)
    out = {
        "distribution": str(args.ann) if args.ann else "coco_like (see the module docstring)",
        "images": len(sizes),
        "img_scale": list(args.img_scale),
        "current": base,
        "proposed": {},
    }
    for k, cs in sorted(proposed.items()):
        if k < 3:
            continue
        entry = evaluate(resized, cs)
        entry["multiscale_waste"] = multiscale(cs)
        entry["canvas_pixels_vs_current"] = round(entry["mean_canvas_pixels"] / base["mean_canvas_pixels"], 4)
        out["proposed"][k] = entry
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
