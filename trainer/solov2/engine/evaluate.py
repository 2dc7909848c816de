"""COCO evaluation: run the model over a loader, turn detections into COCO results, score them.

The model's part is static (``model(images)`` gives fixed-size :class:`~solov2.structures.Detections`);
everything after it is per image: valid slots are pasted back to the original image size, thresholded,
boxed and run-length encoded where the model ran (only the run boundaries of an accelerator's masks
are copied to the host), and scored with pycocotools' ``COCOeval`` for ``segm`` and for ``bbox``
(boxes are the extents of the predicted masks; SOLOv2 predicts no boxes).

Metric values are ``COCOeval.stats`` as they come: AP in 0..1, and -1 where the evaluated images hold
no ground truth in that area range. When there are no detections at all, every AP is 0.0 (pycocotools
cannot load an empty result list).
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from ..structures import Batch, Detections
from .inference import ImageMeta, Instances, Runner, TorchRunner, detect, instance_records, to_instances

__all__ = ["AP_NAMES", "IOU_TYPES", "detections_to_coco", "evaluate", "format_ap_table"]

IOU_TYPES = ("segm", "bbox")
AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
"""The first six ``COCOeval.stats``; metric keys are ``f"{iou_type}_{name}"``."""


def detections_to_coco(
    det: Detections,
    batch: Batch,
    *,
    label_to_category: Sequence[int],
    mask_thr: float,
    canvas_size: tuple[int, int] | None = None,
) -> list[dict[str, Any]]:
    """COCO result dicts for the real images of a batch (one image at a time).

    Args:
        det: the model's output for ``batch`` (any device; masks at stride 4 of the canvas).
        batch: the batch; images with ``image_id == -1`` (padding) are skipped.
        label_to_category: COCO ``category_id`` of each contiguous label.
        mask_thr: soft-mask threshold applied after pasting.
        canvas_size: ``(H, W)`` of the padded canvas; default: ``batch.images``' spatial size.

    Returns:
        One ``{"image_id", "category_id", "segmentation" (RLE, str counts), "bbox" ([x, y, w, h] of the
        mask), "score"}`` per valid slot whose pasted mask is not empty.
    """
    if canvas_size is None:
        canvas_size = (int(batch.images.shape[-2]), int(batch.images.shape[-1]))
    results: list[dict[str, Any]] = []
    for b, (image_id, meta) in enumerate(_metas(batch)):
        if meta is None:
            continue
        instances = to_instances(det, b, meta, canvas_size=canvas_size, mask_thr=mask_thr)
        results.extend(_coco_results(instances, image_id, label_to_category))
    return results


def _metas(batch: Batch) -> list[tuple[int, ImageMeta | None]]:
    """``(image_id, meta)`` of each image of a batch; ``meta`` is None for padding (``image_id == -1``)."""
    image_sizes, original_sizes = batch.image_sizes.tolist(), batch.original_sizes.tolist()
    return [
        (int(i), None if int(i) == -1 else ImageMeta(tuple(image_sizes[b]), tuple(original_sizes[b])))
        for b, i in enumerate(batch.image_ids.tolist())
    ]


def _coco_results(
    instances: Instances, image_id: int, label_to_category: Sequence[int]
) -> list[dict[str, Any]]:
    results = []
    for record in instance_records(instances):
        label = record["label"]
        if not 0 <= label < len(label_to_category):
            raise ValueError(
                f"detections_to_coco: label {label} has no COCO category "
                f"(label_to_category has {len(label_to_category)} entries)"
            )
        results.append(
            {
                "image_id": image_id,
                "category_id": int(label_to_category[label]),
                "segmentation": record["segmentation"],
                "bbox": [round(v, 2) for v in record["bbox"]],
                "score": record["score"],
            }
        )
    return results


def _coco_stats(
    coco_gt: COCO, results: list[dict[str, Any]], iou_type: str, image_ids: list[int]
) -> list[float]:
    """The six AP values of ``COCOeval`` for one IoU type (0.0 each when there are no results)."""
    if not results:
        return [0.0] * len(AP_NAMES)
    # loadRes adds fields to the dicts it gets and prefers "bbox" for the area, so each IoU type gets
    # its own copies holding only its geometry (segm areas then come from the masks).
    geometry = "segmentation" if iou_type == "segm" else "bbox"
    own = [
        {
            "image_id": r["image_id"],
            "category_id": r["category_id"],
            geometry: r[geometry],
            "score": r["score"],
        }
        for r in results
    ]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_dt = coco_gt.loadRes(own)
        coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
        coco_eval.params.imgIds = image_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return [float(v) for v in coco_eval.stats[: len(AP_NAMES)]]


def _gather(payload: Any, rank: int, world_size: int) -> list[Any] | None:
    """Every rank's ``payload`` on rank 0 (rank order), ``None`` elsewhere."""
    if world_size <= 1:
        return [payload]
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"evaluate: world_size={world_size} but torch.distributed is not initialised")
    gathered: list[Any] | None = [None] * world_size if rank == 0 else None
    dist.gather_object(payload, gathered, dst=0)
    return gathered


def _num_batches(loader: Iterable[Batch]) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def evaluate(
    model: nn.Module | Runner,
    loader: Iterable[Batch],
    coco_gt: COCO,
    *,
    label_to_category: Sequence[int],
    device: torch.device | str,
    mask_thr: float,
    out_dir: Path | None = None,
    rank: int = 0,
    world_size: int = 1,
    autocast_dtype: torch.dtype | None = None,
    log: Callable[[str], None] = print,
    log_interval: int = 50,
    inferred: Callable[[], Iterable[int]] | None = None,
) -> dict[str, float]:
    """Run ``model`` over ``loader`` and score the detections against ``coco_gt`` (segm and bbox).

    In a distributed run every rank evaluates its own shard of the loader; the COCO results are
    gathered on rank 0 (``gather_object``, fine on gloo and NCCL), which scores them. An image seen
    more than once (a sampler padding its shards) counts once, with the detections of its first
    occurrence. Evaluation is restricted to the image ids seen (``COCOeval.params.imgIds``).

    Args:
        model: a PyTorch model returning :class:`Detections` from ``model(images)`` in eval mode (run
            by :class:`~solov2.engine.inference.TorchRunner` on ``device``, under autocast if
            ``autocast_dtype`` is set; its train/eval state is restored), or any runner (an ONNX one).
        loader: yields :class:`Batch`; images are moved to ``device`` here.
        coco_gt: the ground truth (pycocotools ``COCO``).
        label_to_category: COCO ``category_id`` of each contiguous label.
        device: where a PyTorch model runs.
        mask_thr: soft-mask threshold after pasting (normally ``cfg.model.inference.mask_thr``).
        out_dir: if given (rank 0), ``detections_segm.json`` (the COCO results) and ``metrics.json``
            are written there.
        rank, world_size: this process's place in the distributed run.
        autocast_dtype: run a PyTorch model under ``torch.autocast`` with this dtype (None: no autocast).
        log: where progress and summary lines go (rank 0 only).
        log_interval: a progress line every this many batches.
        inferred: called on every rank once its inference is done, before the results are gathered
            and rank 0 scores them: the place for a collective of its own, while the ranks are still
            together (the other ranks do not wait in it for the scoring, which can be long). It returns
            the ids of images to score without detections (images skipped as unreadable: their ground
            truth counts as missed, as it would in a run that read them and found nothing).

    Returns:
        On rank 0: ``{"segm_AP", "segm_AP50", "segm_AP75", "segm_APs", "segm_APm", "segm_APl",
        "bbox_AP", ..., "bbox_APl"}`` as floats (``COCOeval.stats``: 0..1, -1 where there is no ground
        truth in an area range) plus ``"images"`` and ``"detections"`` (ints, the counts scored).
        On other ranks: ``{}``.
    """
    runner = TorchRunner(model, device, autocast_dtype) if isinstance(model, nn.Module) else model
    per_image: dict[int, list[dict[str, Any]]] = {}
    num_batches = _num_batches(loader)
    start = time.perf_counter()
    for index, batch in enumerate(loader, start=1):
        metas = _metas(batch)
        # An image seen before (a sampler padding its shards) is neither pasted back nor encoded again.
        wanted = [None if image_id in per_image else meta for image_id, meta in metas]
        found = detect(runner, batch.images, wanted, mask_thr=mask_thr)
        for (image_id, _), instances in zip(metas, found, strict=True):
            if instances is not None and image_id not in per_image:
                per_image[image_id] = _coco_results(instances, image_id, label_to_category)
        if rank == 0 and log_interval > 0 and (index % log_interval == 0 or index == num_batches):
            elapsed = time.perf_counter() - start
            of = f"/{num_batches}" if num_batches is not None else ""
            log(
                f"eval batch {index}{of}: {len(per_image)} images, "
                f"{len(per_image) / max(elapsed, 1e-9):.1f} img/s"
            )

    unseen = set(inferred()) if inferred is not None else set()
    gathered = _gather(per_image, rank, world_size)
    if gathered is None:
        return {}
    merged: dict[int, list[dict[str, Any]]] = {}
    for part in gathered:
        for image_id, dets in part.items():
            merged.setdefault(image_id, dets)
    results = [r for image_id in sorted(merged) for r in merged[image_id]]
    image_ids = sorted(set(merged) | unseen)

    metrics: dict[str, float] = {}
    for iou_type in IOU_TYPES:
        stats = _coco_stats(coco_gt, results, iou_type, image_ids)
        metrics.update({f"{iou_type}_{name}": v for name, v in zip(AP_NAMES, stats, strict=True)})
    metrics["images"] = len(image_ids)
    metrics["detections"] = len(results)
    log(
        f"eval done: {len(image_ids)} images, {len(results)} detections, "
        f"segm AP {metrics['segm_AP']:.4f}, bbox AP {metrics['bbox_AP']:.4f} "
        f"({time.perf_counter() - start:.1f} s)"
    )
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "detections_segm.json").write_text(json.dumps(results))
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def format_ap_table(metrics: Mapping[str, float]) -> str:
    """The AP table (rows segm and bbox, columns AP AP50 AP75 APs APm APl) in percent, one decimal, as
    its corner says (``metrics.json``, ``results.json`` and the termination message hold fractions).

    A missing value, or a negative one (no ground truth in that area range), shows as ``-``.
    """
    width = 7
    lines = ["%".ljust(6) + "".join(name.rjust(width) for name in AP_NAMES)]
    for iou_type in IOU_TYPES:
        cells = []
        for name in AP_NAMES:
            value = metrics.get(f"{iou_type}_{name}")
            cells.append("-" if value is None or value < 0 else f"{100 * value:.1f}")
        lines.append(iou_type.ljust(6) + "".join(c.rjust(width) for c in cells))
    return "\n".join(lines)
