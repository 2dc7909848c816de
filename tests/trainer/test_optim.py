"""The optimiser the config names, with its hyper-parameters."""

from __future__ import annotations

import torch

from solov2.config import load_config
from solov2.engine.optim import build_optimizer


def test_optimizer_follows_the_config():
    params = [torch.nn.Parameter(torch.ones(3))]
    sgd = build_optimizer(params, load_config("solov2_r50_fpn_1x_coco").train, 0.02)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 0.0001
    cfg = load_config("solov2_r50_fpn_1x_coco", ["train.optimizer=adamw", "train.weight_decay=0.05"]).train
    adamw = build_optimizer(params, cfg, 0.001)
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.defaults["lr"] == 0.001 and adamw.defaults["weight_decay"] == 0.05
