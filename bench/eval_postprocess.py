"""Evaluation's per-image post-processing: from the model's fixed-size detections to COCO results.

    python bench/eval_postprocess.py                  # on the CPU
    python bench/eval_postprocess.py --device cuda    # where the masks are on a GPU

Setting: one image of 480x640 on the 800x1088 canvas (R50 1x evaluation), ``--detections`` valid slots
(100: ``max_per_img``, which COCO evaluation of a trained model mostly fills) holding soft ellipse masks
of COCO-like sizes at stride 4. Times per image, median of ``--repeats``:

- ``paste_ms``: :func:`~solov2.engine.inference.to_instances` (paste back, threshold, drop empty masks);
- ``records_ms``: :func:`~solov2.engine.inference.instance_records` (boxes and RLE of each mask) as the
  evaluation runs it: on the CPU pycocotools encodes the masks; on an accelerator the run boundaries
  are found there and only they are copied to the host (``encode_rle_by_runs``);
- ``records_host_masks_ms``: the same from the masks copied to the host first (the copy included), as
  evaluation did before; ``records_by_runs_ms``: the run-boundary encoding forced (on the CPU too);
- ``bytes_to_host``: what each way copies to the host per image.

All ways give identical results (checked). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "trainer")]

from machine_info import machine_info  # noqa: E402
from solov2.engine.inference import ImageMeta, Instances, instance_records, to_instances  # noqa: E402
from solov2.postprocess import encode_rle_by_runs, masks_to_boxes_xywh, run_starts  # noqa: E402
from solov2.structures import Detections  # noqa: E402

CANVAS = (800, 1088)
ORIGINAL = (480, 640)
IMAGE = (800, 1067)  # 480x640 fitted into (1333, 800)


def soft_ellipses(k: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """``[k, H/4, W/4]`` soft masks: ellipses whose sides follow COCO's spread (a few to a few hundred
    pixels of the original image), 1 at the centre falling to 0 at the rim."""
    g = torch.Generator().manual_seed(seed)
    h, w = CANVAS[0] // 4, CANVAS[1] // 4
    yy, xx = torch.meshgrid(torch.arange(float(h)), torch.arange(float(w)), indexing="ij")
    side = torch.exp(torch.empty(k, 2, 1, 1).uniform_(1.0, 4.6, generator=g))  # 3..100 cells
    cy, cx = torch.rand(k, 1, 1, generator=g) * IMAGE[0] / 4, torch.rand(k, 1, 1, generator=g) * IMAGE[1] / 4
    soft = 1 - ((yy - cy) / side[:, 0]) ** 2 - ((xx - cx) / side[:, 1]) ** 2
    return soft.clamp(0, 1).to(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, Any]:
    """Median milliseconds of ``fn`` (the device synchronised around each call) and its last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return round(statistics.median(times), 2), out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the model's output is: cpu or cuda (timings synchronise CUDA only)",
    )
    parser.add_argument("--detections", type=int, default=100, help="valid detection slots per image")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(json.dumps(measure(torch.device(args.device), args.detections, args.repeats)))


def measure(device: torch.device, k: int, repeats: int) -> dict[str, Any]:
    """The report for ``k`` detections whose soft masks are on ``device``, median of ``repeats``."""
    det = Detections(
        scores=torch.linspace(0.9, 0.1, k, device=device)[None],
        labels=(torch.arange(k, device=device) % 80)[None],
        masks=soft_ellipses(k, device)[None],
        valid=torch.ones(1, k, dtype=torch.bool, device=device),
    )
    meta = ImageMeta(image_size=IMAGE, original_size=ORIGINAL)
    paste_ms, instances = timed(
        lambda: to_instances(det, 0, meta, canvas_size=CANVAS, mask_thr=0.5), device, repeats
    )
    records_ms, records = timed(lambda: instance_records(instances), device, repeats)

    def host_masks() -> list[dict[str, Any]]:
        return instance_records(Instances(instances.masks.cpu(), instances.labels, instances.scores))

    host_ms, host_records = timed(host_masks, device, repeats)
    runs_ms, runs_rles = timed(lambda: encode_rle_by_runs(instances.masks), device, repeats)
    boxes_ms, _ = timed(lambda: masks_to_boxes_xywh(instances.masks).tolist(), device, repeats)
    same = records == host_records and [r["segmentation"] for r in records] == runs_rles
    starts = run_starts(instances.masks)
    return {
        "bench": "eval_postprocess",
        "machine": machine_info(device),
        "setting": {
            "original": ORIGINAL,
            "canvas": CANVAS,
            "detections": k,
            "masks_kept": int(instances.masks.shape[0]),
            "foreground_fraction": round(float(instances.masks.float().mean()), 4),
            "repeats": repeats,
        },
        "per_image": {
            "paste_ms": paste_ms,
            "records_ms": records_ms,
            "records_host_masks_ms": host_ms,
            "records_by_runs_ms": round(runs_ms + boxes_ms, 2),
            "bytes_to_host": {
                "masks": instances.masks.numel(),  # bool: one byte per pixel
                "run_boundaries": starts.numel() * starts.element_size(),  # what encode_rle_by_runs copies
            },
        },
        "identical_results": same,
    }


if __name__ == "__main__":
    main()
