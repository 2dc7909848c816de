"""The learning-rate schedule: linear scaling with the batch, warm-up and steps."""

from __future__ import annotations

import pytest

from solov2.config import load_config
from solov2.engine.schedule import lr_factor, scaled_lr


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
