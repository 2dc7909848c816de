"""`solov2 check-static` passes on the real step and fails when a data-dependent op sneaks in."""

from __future__ import annotations

import json

import pytest

import solov2.model.solov2 as solov2_module
from solov2.cli import main

pytestmark = pytest.mark.compile


def run_check(capsys) -> tuple[int, dict]:
    code = main(["check-static", "--config", "solov2_tiny_cpu"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    return code, json.loads(lines[-1])


def test_training_step_and_inference_are_one_static_graph(capsys):
    code, report = run_check(capsys)
    print("check-static:", report)
    assert code == 0 and report["ok"]
    assert report["instance_counts"] == [0, 3, 16]
    for path in ("train", "inference"):
        assert report[path]["batches"] == 3
        assert report[path]["graphs"] == 1
        assert report[path]["graph_breaks"] == 0
        assert report[path]["recompiles"] == 0
        assert report[path]["data_dependent_ops"] == []


def _inject(monkeypatch, extra):
    original = solov2_module.solov2_losses

    def losses_with_extra(cls_logits, kernel_preds, mask_feats, gt_masks_s4, targets, *, cfg):
        out = original(cls_logits, kernel_preds, mask_feats, gt_masks_s4, targets, cfg=cfg)
        out["loss_cls"] = out["loss_cls"] + extra(cls_logits, targets)
        return out

    monkeypatch.setattr(solov2_module, "solov2_losses", losses_with_extra)


def test_boolean_mask_indexing_in_the_loss_fails_the_check(monkeypatch, capsys):
    _inject(monkeypatch, lambda logits, t: logits[t.pos_cells].sum() * 0)
    code, report = run_check(capsys)
    assert code == 1 and not report["ok"] and not report["train"]["ok"]
    train = report["train"]
    assert train["data_dependent_ops"] or train["graph_breaks"], train
    assert report["inference"]["ok"]  # the injected loss only runs in training


def test_item_in_the_loss_fails_the_check(monkeypatch, capsys):
    _inject(monkeypatch, lambda logits, t: logits.sum() * 0 / max(t.pos_cells.sum().item(), 1))
    code, report = run_check(capsys)
    assert code == 1 and not report["train"]["ok"]
    train = report["train"]
    assert train["graph_breaks"] or "_local_scalar_dense" in train["data_dependent_ops"], train
