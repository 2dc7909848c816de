"""The learning-rate schedule: linear scaling with the batch, warm-up and steps."""

from __future__ import annotations

import pytest

from solov2.config import load_config
from solov2.engine.schedule import lr_factor, scaled_lr, schedule_warnings


def test_learning_rate_schedule():
    cfg = load_config("solov2_r50_fpn_1x_coco").train
    assert scaled_lr(cfg, 16) == pytest.approx(0.01) and scaled_lr(cfg, 2) == pytest.approx(0.00125)
    ipe = 1000
    assert lr_factor(0, iters_per_epoch=ipe, cfg=cfg) == pytest.approx(0.01)
    assert lr_factor(250, iters_per_epoch=ipe, cfg=cfg) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(500, iters_per_epoch=ipe, cfg=cfg) == 1.0
    assert lr_factor(8 * ipe - 1, iters_per_epoch=ipe, cfg=cfg) == 1.0
    assert lr_factor(8 * ipe, iters_per_epoch=ipe, cfg=cfg) == pytest.approx(0.1)
    assert lr_factor(11 * ipe, iters_per_epoch=ipe, cfg=cfg) == pytest.approx(0.01)
    one_pass = load_config("solov2_tiny_cpu", ["train.epochs=1", "train.lr_steps=[0.75]"]).train
    assert lr_factor(749, iters_per_epoch=ipe, cfg=one_pass) == 1.0
    assert lr_factor(750, iters_per_epoch=ipe, cfg=one_pass) == pytest.approx(0.1)


def test_settings_a_short_run_never_reaches_are_warned_about():
    cfg = load_config(
        "solov2_tiny_cpu", ["train.epochs=3", "train.lr_steps=[2,3,5]", "train.warmup_iters=50"]
    )
    assert schedule_warnings(cfg.train, total_iters=300) == [
        "train.lr_steps [3, 5] do not come before the end of the run (train.epochs=3): "
        "the learning rate is not decayed there"
    ]
    assert schedule_warnings(cfg.train, total_iters=30) == [
        "train.warmup_iters (50) is longer than the run (30 iterations): the learning rate never reaches "
        "train.base_lr",
        "train.lr_steps [3, 5] do not come before the end of the run (train.epochs=3): "
        "the learning rate is not decayed there",
    ]
    fine = load_config("solov2_tiny_cpu", ["train.epochs=3", "train.lr_steps=[2]"])
    assert schedule_warnings(fine.train, total_iters=300) == []
