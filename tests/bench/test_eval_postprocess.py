"""``bench/eval_postprocess.py`` measures evaluation's per-image post-processing; a GPU session runs it
with ``--device cuda``. On the CPU it still checks that both encodings agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "eval_postprocess.py"


def test_both_encodings_give_the_same_records():
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--detections", "20", "--repeats", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["identical_results"] is True
    assert report["setting"]["masks_kept"] == 20
    assert report["per_image"]["bytes_to_host"]["masks"] == 20 * 480 * 640  # pasted at the original size
