"""Non-finite losses: a skipped step leaves the weights alone and is counted; too many in a row stop."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import solov2.engine.train as train_module
from solov2.config import load_config
from solov2.engine.train import TrainingDiverged, TrainOptions, train

pytestmark = pytest.mark.slow


def _poison(monkeypatch, bad_calls: set[int]) -> list[int]:
    original = train_module.total_loss
    calls: list[int] = []

    def total_loss(out):
        calls.append(len(calls) + 1)
        loss = original(out)
        return loss * float("nan") if len(calls) in bad_calls else loss

    monkeypatch.setattr(train_module, "total_loss", total_loss)
    return calls


def _opts(data, work):
    return TrainOptions(data_path=data, work_dir=work, device="cpu", evaluate=False, termination_log=None)


def test_one_nan_step_is_skipped_and_counted(small_coco, tmp_path, monkeypatch):
    _poison(monkeypatch, {2})
    messages: list[str] = []
    results = train(
        load_config("solov2_tiny_cpu", ["train.epochs=1"]), _opts(small_coco, tmp_path), log=messages.append
    )
    assert results["nonfinite_steps"] == 1 and results["iterations"] == 4
    # The last logged losses reach the results by name, the total as "loss".
    assert {"loss", "loss_cls", "loss_mask"} <= results.keys()
    assert results["loss"] == pytest.approx(results["loss_cls"] + results["loss_mask"], rel=1e-5)
    assert any("iteration 2: non-finite loss or gradient, step skipped" in m for m in messages)
    weights = torch.load(tmp_path / "checkpoints" / "epoch_1.pth", weights_only=False)["model"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    # A resumed run goes on counting from the checkpoint: the result covers the whole training.
    resumed = dataclasses.replace(_opts(small_coco, tmp_path), resume=True)
    results = train(load_config("solov2_tiny_cpu", ["train.epochs=2"]), resumed, log=lambda _m: None)
    assert results["iterations"] == 8 and results["nonfinite_steps"] == 1


def test_too_many_in_a_row_stop_with_a_clear_message(small_coco, tmp_path, monkeypatch):
    _poison(monkeypatch, {2, 3, 4})
    cfg = load_config("solov2_tiny_cpu", ["train.epochs=1", "train.max_nonfinite=3"])
    opts = dataclasses.replace(_opts(small_coco, tmp_path), termination_log=tmp_path / "termination-log")
    with pytest.raises(TrainingDiverged, match=r"3 consecutive steps .*\(train\.max_nonfinite=3\)"):
        train(cfg, opts, log=lambda _m: None)
    # The operator learns why, and that restarting the gang would not help.
    message = json.loads((tmp_path / "termination-log").read_text())
    assert message["error_type"] == "TrainingDiverged" and message["retryable"] is False
    assert "3 consecutive steps" in message["error"]
    # The state before the first bad step is kept: the checkpoint written on stopping has finite weights.
    state = torch.load(tmp_path / "checkpoints" / "diverged_iter_4.pth", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
