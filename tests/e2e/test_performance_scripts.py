"""The ModelZoo performance scripts: a bounded run from the start, no evaluation, and the FPS line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "trainer" / "scripts"

pytestmark = pytest.mark.slow


def _perf(data: Path, work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SOLOV2": str(Path(sys.executable).with_name("solov2"))}
    return subprocess.run(
        ["bash", str(SCRIPTS / "train_performance_1p.sh"), f"--data_path={data}", f"--work_dir={work}",
         "--config=solov2_tiny_cpu", "--device=cpu", *args],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_performance_1p_trains_the_steps_from_the_start_and_prints_the_fps(small_coco, tmp_path):
    work = tmp_path / "perf"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    res = _perf(small_coco, work, "--steps=6", "--", "--opts", "train.log_interval=2")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    fps = re.search(r"^FPS: ([0-9.]+) images/s over 6 iterations", res.stdout, re.M)
    results = json.loads((work / "results.json").read_text())
    assert fps and float(fps[1]) == results["images_per_second"] > 0
    assert results["iterations"] == 6 and "segm_AP" not in results  # no evaluation
    assert "iter 6/6 " in res.stdout and fps[0] in (work / "train.log").read_text()
    # The run's directory, its checkpoint with it, is gone; what was there stays.
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt", "results.json", "train.log"]
    # Run again, even with --resume passed on: a new measurement from the start.
    res = _perf(small_coco, work, "--steps=2", "--", "--resume")
    assert res.returncode == 0, res.stderr
    assert "resume: no checkpoint" in res.stdout
    assert json.loads((work / "results.json").read_text())["iterations"] == 2


def test_performance_steps_must_be_a_positive_count(tmp_path):
    res = _perf(tmp_path, tmp_path / "perf", "--steps=0")
    assert res.returncode == 2 and "--steps: a positive number of iterations, not '0'" in res.stderr


def test_a_failed_run_leaves_its_log_and_no_run_directory(tmp_path):
    work = tmp_path / "perf"
    res = _perf(tmp_path, work, "--steps=2")  # no annotations there
    assert res.returncode != 0 and "FPS" not in res.stdout
    assert sorted(p.name for p in work.iterdir()) == ["train.log"]
    assert "annotation file not found" in (work / "train.log").read_text()
