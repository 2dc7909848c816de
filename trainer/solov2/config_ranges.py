"""The allowed range of every numeric config field, and the check that applies them.

Every ``int`` or ``float`` field of the config tree (also inside lists) must have an entry in
:data:`RANGES`; :func:`check_ranges` refuses a config tree with a numeric field that has none, so a
new field cannot ship without its range. Cross-field rules (divisibility, matching lengths) stay in
:func:`solov2.config.validate`.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = ["RANGES", "Range", "check_ranges", "numeric_fields"]


@dataclass(frozen=True)
class Range:
    """``lo <= value <= hi`` (``<`` where the bound is open); None: unbounded on that side."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, value: float) -> bool:
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return not (self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi))

    def describe(self) -> str:
        if self.hi is None:
            if self.lo == 0:
                return "must be positive" if self.lo_open else "must be non-negative"
            return f"must be {'greater than' if self.lo_open else 'at least'} {self.lo:g}"
        left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
        return f"must lie in {left}{self.lo:g}, {self.hi:g}{right}"


AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, lo_open=True)
UNIT = Range(0, 1)  # [0, 1]
UNIT_OPEN_HIGH = Range(0, 1, hi_open=True)  # [0, 1)
UNIT_OPEN_LOW = Range(0, 1, lo_open=True)  # (0, 1]

RANGES: dict[str, Range] = {
    "model.backbone.depth": Range(18, 101),  # and one of 18, 34, 50, 101 (config.validate)
    "model.backbone.frozen_stages": Range(-1, 4),
    "model.fpn.out_channels": AT_LEAST_1,
    "model.fpn.num_outs": Range(2, 6),
    "model.head.num_classes": AT_LEAST_1,
    "model.head.feat_channels": AT_LEAST_1,
    "model.head.stacked_convs": AT_LEAST_1,
    "model.head.strides": AT_LEAST_1,
    "model.head.num_grids": AT_LEAST_1,
    "model.head.scale_ranges": NON_NEGATIVE,
    "model.head.pos_scale": UNIT_OPEN_LOW,
    "model.head.norm_groups": AT_LEAST_1,
    "model.head.prior_prob": Range(0, 1, lo_open=True, hi_open=True),
    "model.mask_feature.feat_channels": AT_LEAST_1,
    "model.mask_feature.out_channels": AT_LEAST_1,
    "model.mask_feature.start_level": NON_NEGATIVE,  # and 0 for now (config.validate)
    "model.mask_feature.end_level": NON_NEGATIVE,
    "model.targets.max_instances": AT_LEAST_1,
    "model.targets.max_positives": AT_LEAST_1,
    "model.loss.focal_alpha": UNIT,
    "model.loss.focal_gamma": NON_NEGATIVE,
    "model.loss.cls_weight": NON_NEGATIVE,
    "model.loss.dice_weight": NON_NEGATIVE,
    "model.loss.dice_eps": POSITIVE,
    "model.inference.score_thr": UNIT_OPEN_HIGH,
    "model.inference.nms_pre": AT_LEAST_1,
    "model.inference.mask_thr": UNIT_OPEN_HIGH,
    "model.inference.update_thr": UNIT_OPEN_HIGH,
    "model.inference.sigma": POSITIVE,
    "model.inference.max_per_img": AT_LEAST_1,
    "data.img_scale": AT_LEAST_1,
    "data.multiscale_short_sides": AT_LEAST_1,
    "data.test_img_scale": AT_LEAST_1,
    "data.flip_prob": UNIT,
    "data.mean": Range(0, 255),
    "data.std": Range(0, 255, lo_open=True),
    "data.size_divisor": AT_LEAST_1,
    "data.canvases": AT_LEAST_1,
    "data.samples_per_device": AT_LEAST_1,
    "data.workers": Range(-1),  # -1: derived from the CPUs the process may use
    "data.prefetch_factor": AT_LEAST_1,
    "train.epochs": AT_LEAST_1,
    "train.max_iters": NON_NEGATIVE,
    "train.base_lr": POSITIVE,
    "train.base_batch_size": AT_LEAST_1,
    "train.momentum": UNIT_OPEN_HIGH,
    "train.weight_decay": NON_NEGATIVE,
    "train.grad_clip": NON_NEGATIVE,
    "train.warmup_iters": NON_NEGATIVE,
    "train.warmup_factor": UNIT_OPEN_LOW,
    "train.lr_steps": POSITIVE,
    "train.lr_gamma": UNIT_OPEN_LOW,
    "train.seed": NON_NEGATIVE,
    "train.loss_scale": NON_NEGATIVE,
    "train.checkpoint_interval": NON_NEGATIVE,
    "train.keep_iter_checkpoints": AT_LEAST_1,
    "train.epoch_checkpoint_every": AT_LEAST_1,
    "train.log_interval": AT_LEAST_1,
    "train.max_nonfinite": AT_LEAST_1,
}
"""Allowed values per dotted field; for a list field, of each number in it."""


def _is_numeric(hint: Any) -> bool:
    if hint in (int, float):
        return True
    if typing.get_origin(hint) is tuple:
        return any(_is_numeric(a) for a in typing.get_args(hint) if a is not Ellipsis)
    return False


def numeric_fields(cls: type, prefix: str = "") -> Iterator[str]:
    """Dotted names of the numeric fields (numbers, or lists of them) in the dataclass tree ``cls``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{f.name}" if prefix else f.name
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from numeric_fields(hint, path)  # type: ignore[arg-type]
        elif _is_numeric(hint):
            yield path


def _numbers(value: Any) -> Iterator[float]:
    if isinstance(value, tuple | list):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield value


def _get(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_ranges(cfg: Any) -> None:
    """Raise :class:`ConfigError` naming the first numeric field outside its range (or not finite)."""
    for path in numeric_fields(type(cfg)):
        if path not in RANGES:  # a bug, not user input: a numeric field was added without a range
            raise TypeError(f"{path}: numeric config field without an entry in solov2.config_ranges.RANGES")
        value = _get(cfg, path)
        rng = RANGES[path]
        for number in _numbers(value):
            if not math.isfinite(number):
                raise ConfigError(f"{path}: must be a finite number, got {value!r}")
            if not rng.contains(number):
                shown = list(value) if isinstance(value, tuple) else value
                raise ConfigError(f"{path}: {rng.describe()}, got {shown}")
