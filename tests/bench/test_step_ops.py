"""``bench/step_ops.py`` counts a real step by phase, in one process and under DDP (the counts it prints
are the README's, and a GPU session runs it with ``--device cuda``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "step_ops.py"


def test_counts_every_phase_of_a_step_alone_and_under_ddp():
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--configs", "solov2_tiny_cpu", "--canvas", "64", "64", "--processes", "1", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    alone, ddp = (json.loads(line) for line in run.stdout.splitlines() if line.startswith("{"))
    assert (alone["processes"], ddp["processes"]) == (1, 2)
    phases = {"backbone", "fpn", "head", "mask_feature", "targets", "losses", "backward", "update"}
    assert phases <= set(alone["by_phase"]) and phases <= set(ddp["by_phase"])
    assert alone["ops_per_step"] == sum(alone["by_phase"].values())
    assert alone["by_phase"]["targets"] < 100
    # The tiny config trains its BatchNorm statistics: DDP broadcasts them before the forward.
    assert ddp["by_phase"]["input"] > alone["by_phase"]["input"]
    assert ddp["by_phase"]["backward"] > alone["by_phase"]["backward"]  # the gradient all-reduce
