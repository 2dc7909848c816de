"""COCO-layout splits: where a split's files are, and evaluating a model on one (training and ``solov2 eval``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..config import Config
from ..data.coco import CocoInstances
from ..data.loader import build_eval_loader, pin_options
from ..device import Runtime
from ..errors import DataError
from .evaluate import evaluate, format_ap_table
from .inference import Runner


def coco_split(data_path: Path, split: str) -> tuple[Path, Path]:
    """``(image_dir, annotation_file)`` of a COCO-layout split (``train2017`` or ``val2017``)."""
    return data_path / split, data_path / "annotations" / f"instances_{split}.json"


class EmptySplit(DataError):
    """The split has no images: there is no AP to compute (a table of zeros would pass for one)."""


def evaluate_split(
    model: nn.Module | Runner,
    cfg: Config,
    *,
    data_path: Path,
    split: str,
    runtime: Runtime,
    autocast_dtype: torch.dtype | None,
    out_dir: Path | None,
    log: Callable[[str], None],
    skip_bad_images: bool = False,
    class_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """COCO segm and bbox AP of ``model`` (a PyTorch model or a runner) on ``split``, images shared across ranks.

    ``class_names``: the model's classes, label by label, as the training set named them (None: not
    known). A split whose categories, in category id order, have other names raises :class:`DataError`:
    its category ids would score each label as another class.

    Rank 0 logs the AP table, writes ``detections_segm.json`` and ``metrics.json`` to ``out_dir`` (if
    given) and returns the metrics (with ``skipped_eval_images``, unreadable images of all ranks, when
    ``skip_bad_images``); other ranks return ``{}``.
    """
    image_dir, ann = coco_split(data_path, split)
    dataset = CocoInstances(
        image_dir, ann, num_classes=cfg.model.head.num_classes, skip_bad_images=skip_bad_images
    )
    if len(dataset) == 0:
        raise EmptySplit(f"{ann}: no images to evaluate")
    if class_names is not None and list(class_names) != dataset.class_names:
        differ = [
            f"{i}: {a!r} vs {b!r}"
            for i, (a, b) in enumerate(zip(class_names, dataset.class_names, strict=True))
            if a != b
        ]
        raise DataError(
            f"{ann}: its categories, in id order, are not the model's (label {', '.join(differ[:3])}, "
            "trained vs here): give both annotation files the same category ids and names"
        )
    loader = build_eval_loader(
        dataset, cfg, rank=runtime.rank, world_size=runtime.world_size, **pin_options(runtime.kind)
    )
    skipped: list[int] = []  # counted over the ranks before rank 0 scores, while all are in step

    def unreadable() -> list[int]:
        ids = bad_image_ids_over_ranks(dataset, runtime)
        skipped.append(len(ids))
        return ids

    metrics = evaluate(
        model,
        loader,
        dataset.coco,
        label_to_category=dataset.label_to_category,
        device=runtime.device,
        mask_thr=cfg.model.inference.mask_thr,
        out_dir=out_dir if runtime.is_main else None,
        rank=runtime.rank,
        world_size=runtime.world_size,
        autocast_dtype=autocast_dtype,
        log=log,
        inferred=unreadable,
    )
    if runtime.is_main and metrics:
        log(format_ap_table(metrics))
        if skip_bad_images:
            metrics["skipped_eval_images"] = skipped[0]
    return metrics


def union_over_ranks(flags: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """``flags`` (one per image, 1 where bad) set on any process, on the CPU (a collective when
    distributed: every process must call it)."""
    if not runtime.distributed:
        return flags
    t = flags.to(device=runtime.device, dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.to(device="cpu", dtype=flags.dtype)


def bad_image_ids_over_ranks(dataset: CocoInstances, runtime: Runtime) -> list[int]:
    """COCO ids of the images of ``dataset`` that any process found bad so far (a collective when
    distributed: every process must call it)."""
    flags = union_over_ranks(dataset.bad_images(), runtime)
    return [int(dataset.image_ids[i]) for i in flags.nonzero().flatten().tolist()]


def sum_over_ranks(value: int, runtime: Runtime) -> int:
    """``value`` summed over the processes (a collective when distributed: every process must call it)."""
    if not runtime.distributed:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=runtime.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return int(t.item())


def distinct_over_ranks(flags: torch.Tensor, runtime: Runtime) -> int:
    """How many entries of ``flags`` (one per image, 1 where bad) are set on any process: an image that
    several processes met (in different epochs) counts once."""
    return int(union_over_ranks(flags, runtime).sum())
