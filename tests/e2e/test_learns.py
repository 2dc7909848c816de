"""The tiny config learns the synthetic shapes from scratch on a CPU in a few minutes: mask AP50 >= 0.5.

The tiny config's own recipe (800 generated images x 3 epochs = 1200 steps of 2 images, AdamW, the
category loss weighted up) reached mask AP50 0.620 on this data set with 2 threads in 3.6 minutes when
the test was written, and 0.628-0.654 over three initialisation seeds with 1 thread. With the compact
ground truth and OpenCV decoding: 0.711 in 5.4 minutes on a slower day of the same machine (the old code
ran at the same 0.27 s per step that day). On a 2-core AMD EPYC machine with AVX2 only (no AVX-512),
oneDNN's convolutions run 2.5x slower and a step takes 0.6 s, about 13 minutes for the recipe: the time
limit is a safety net for such machines, not a speed target. Padding the canvases with the mean colour
instead of black moved seed 0 from 0.700 to 0.585; over train.seed 0, 1, 2 the two gave 0.585, 0.698,
0.645 (mean colour) and 0.700, 0.698, 0.525 (black): the seed decides more than the padding here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from solov2.data.synthetic import write_synthetic_coco

pytestmark = pytest.mark.slow

TRAIN_IMAGES, VAL_IMAGES = 800, 50
OPTS = ["train.log_interval=100"]  # the tiny config's own recipe: 3 epochs, lr / 10 for the last


def test_tiny_model_learns_synthetic_shapes(tmp_path, capsys):
    data = write_synthetic_coco(tmp_path / "data", train=TRAIN_IMAGES, val=VAL_IMAGES, seed=5)
    work = tmp_path / "work"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "solov2.cli", "train", "--config", "solov2_tiny_cpu", "--data-path", str(data),
         "--work-dir", str(work), "--device", "cpu", "--termination-log", str(work / "termination-log"),
         "--opts", *OPTS],
        capture_output=True, text=True, timeout=25 * 60,
    )  # fmt: skip
    minutes = (time.monotonic() - start) / 60
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((work / "results.json").read_text())
    table = proc.stdout[proc.stdout.rfind("\n", 0, proc.stdout.rfind("AP50")) + 1 :]  # the AP table
    with capsys.disabled():  # shown in every run, not only when the test fails
        print(f"\ntrained and evaluated in {minutes:.1f} min; mask AP50 {results['segm_AP50']:.3f}\n{table}")
    assert results["images"] == VAL_IMAGES
    assert results["segm_AP50"] >= 0.5
