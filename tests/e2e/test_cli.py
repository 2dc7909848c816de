"""The `solov2` command line as a user runs it: train, eval, predict, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from solov2.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(small_coco, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    code = main(["train", "--config", "solov2_tiny_cpu", "--data-path", str(small_coco), "--work-dir", str(work),
                 "--device", "cpu", "--termination-log", str(work / "termination-log"),
                 # thresholds at 0: the barely trained model still detects, so there is something to compare
                 "--opts", "train.epochs=1", "model.inference.score_thr=0.0",
                 "model.inference.update_thr=0.0"])  # fmt: skip
    assert code == 0
    return work


def test_train_writes_checkpoint_results_and_termination_message(trained):
    assert (trained / "checkpoints" / "epoch_1.pth").is_file()
    results = json.loads((trained / "results.json").read_text())
    message = (trained / "termination-log").read_bytes()
    assert len(message) < 4096 and b"\n" not in message.strip()
    sent = json.loads(message)
    assert sent["loss"] == round(results["loss"], 4) != results["loss"]  # floats rounded to 4 decimals
    assert sent["segm_AP"] == round(results["segm_AP"], 4)  # (4 iterations in, the AP may well be 0)
    for key in ("segm_AP", "segm_AP50", "bbox_AP", "epochs", "iterations", "images_per_second", "checkpoint"):
        assert key in results
    assert results["iterations"] == 4 and results["images"] == 4 and results["detections"] > 0
    assert (trained / "detections_segm.json").is_file() and (trained / "metrics.json").is_file()


def test_eval_reproduces_the_training_evaluation(trained, small_coco, tmp_path, capsys):
    code = main(["eval", "--data-path", str(small_coco), "--checkpoint", str(trained / "checkpoints" / "epoch_1.pth"),
                 "--work-dir", str(tmp_path), "--device", "cpu"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "segm" in out and "AP50" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    results = json.loads((trained / "results.json").read_text())
    assert metrics["segm_AP"] == results["segm_AP"] and metrics["bbox_AP"] == results["bbox_AP"]
    detections = json.loads((tmp_path / "detections_segm.json").read_text())
    assert detections and detections == json.loads((trained / "detections_segm.json").read_text())


def test_eval_refuses_a_split_whose_categories_are_not_the_models(trained, small_coco, tmp_path, capsys):
    data = tmp_path / "coco"
    shutil.copytree(small_coco, data)
    ann = data / "annotations" / "instances_val2017.json"
    coco = json.loads(ann.read_text())
    names = [c["name"] for c in coco["categories"]]
    for cat, name in zip(coco["categories"], reversed(names), strict=True):  # the same ids, other classes
        cat["name"] = name
    ann.write_text(json.dumps(coco))
    code = main(["eval", "--data-path", str(data), "--checkpoint", str(trained / "checkpoints" / "epoch_1.pth"),
                 "--device", "cpu"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("solov2 eval: error: ") and "categories, in id order, are not the model's" in err
    assert f"label 0: {names[0]!r} vs {names[-1]!r}" in err


def test_predict_writes_overlays_and_json(trained, small_coco, tmp_path):
    images = sorted((small_coco / "val2017").iterdir())[:2]
    code = main(["predict", *map(str, images), "--checkpoint", str(trained / "checkpoints" / "epoch_1.pth"),
                 "--out", str(tmp_path), "--device", "cpu", "--score-thr", "0.0"])  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(f"{p.stem}.png" for p in images)
    records = json.loads((tmp_path / "predictions.json").read_text())
    assert [Path(r["file"]).name for r in records] == [p.name for p in images]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "solov2.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_bad_input_is_one_line_naming_the_problem(tmp_path):
    res = _run("train", "--data-path", str(tmp_path / "nowhere"), "--work-dir", str(tmp_path / "w"),
               "--config", "solov2_tiny_cpu", "--device", "cpu",
               "--termination-log", str(tmp_path / "termination-log"))  # fmt: skip
    assert res.returncode == 2
    assert "nowhere" in res.stderr and "Traceback" not in res.stderr
    message = json.loads((tmp_path / "termination-log").read_text())
    assert message["error_type"] == "DataError" and message["retryable"] is False
    assert "nowhere" in message["error"] and message["error"] in res.stderr
    res = _run("smoke", "--opts", "model.head.strides=[8,8,16,32]")
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "solov2 smoke: error: model.head.strides: has 4 entries but model.head.num_grids has 5 levels"
    )
    res = _run("eval", "--data-path", str(tmp_path), "--checkpoint", str(tmp_path / "missing.pth"))
    assert res.returncode == 2 and "missing.pth" in res.stderr and "Traceback" not in res.stderr


def test_make_synthetic_and_params(tmp_path, capsys):
    assert main(["make-synthetic", str(tmp_path / "d"), "--train", "3", "--val", "2"]) == 0
    assert len(list((tmp_path / "d" / "train2017").iterdir())) == 3
    assert main(["params", "--config", "solov2_tiny_cpu"]) == 0
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert counts["total"] == counts["backbone"] + counts["fpn"] + counts["head"]


def test_smoke_prints_falling_losses(capsys):
    """On whatever ``--device auto`` picks here (it used to reach torch as the device name "auto")."""
    assert main(["smoke", "--steps", "4", "--lr", "0.01", "--device", "auto"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert len(lines) == 4
    losses = [float(line.split("loss ")[1].split()[0]) for line in lines]
    assert losses[-1] < losses[0]
