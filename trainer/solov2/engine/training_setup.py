"""What a training run is given and builds before its loop: its options, seeds, the training data set
and loader, the metrics."""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..data.coco import CocoInstances
from ..data.loader import Loader, build_train_loader, pin_options
from ..device import Runtime
from ..errors import ConfigError
from ..metrics import NullMetrics, TrainingMetrics
from .sigterm import leave_process_group
from .splits import coco_split

__all__ = ["TrainOptions", "open_metrics", "seed_everything", "train_dataset", "train_loader"]


@dataclass(frozen=True)
class TrainOptions:
    """Run-time options of ``solov2 train`` (the config holds the recipe)."""

    data_path: Path
    work_dir: Path
    device: str = "auto"
    resume: bool = False
    load_from: Path | None = None
    compile: bool = False
    evaluate: bool = True
    termination_log: Path | None = Path("/dev/termination-log")
    metrics_port: int | None = None
    skip_bad_images: bool = False
    config_name: str = ""
    compile_mode: str = "default"
    stop_timeout: float = 25.0
    """Seconds from SIGTERM to the forced exit when no step boundary and checkpoint came first."""


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (model initialisation)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_dataset(cfg: Config, data_path: Path, *, skip_bad_images: bool) -> CocoInstances:
    """The ``train2017`` split of ``data_path``, checked against the model's class count."""
    image_dir, ann = coco_split(data_path, "train2017")
    return CocoInstances(
        image_dir,
        ann,
        num_classes=cfg.model.head.num_classes,
        skip_bad_images=skip_bad_images,
        filter_empty_gt=cfg.data.filter_empty_gt,
        bad_image_hint=" (--skip-bad-images replaces and counts such images; --resume continues the run)",
    )


def train_loader(dataset: CocoInstances, cfg: Config, runtime: Runtime) -> Loader:
    """One loader for the whole run (its workers persist; each epoch re-seeds it); its workers leave
    the process group (a SIGTERM reaches the training process alone)."""
    loader = build_train_loader(
        dataset,
        cfg,
        rank=runtime.rank,
        world_size=runtime.world_size,
        **pin_options(runtime.kind),
    )
    loader.worker_init_fn = functools.partial(leave_process_group, then=loader.worker_init_fn)
    return loader


def open_metrics(port: int | None, *, main: bool) -> TrainingMetrics | NullMetrics:
    """Prometheus metrics on ``port`` in the main process, else a stand-in that records nothing."""
    if not main or port is None:
        return NullMetrics()
    try:
        return TrainingMetrics(port=port)
    except OSError as exc:
        raise ConfigError(f"--metrics-port {port}: cannot listen ({exc.strerror or exc})") from None
