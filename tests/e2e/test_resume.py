"""Killing training mid-epoch and resuming reaches the same weights as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

OPTS = ["train.epochs=2", "train.checkpoint_interval=1", "train.log_interval=1", "data.samples_per_device=2"]


def _command(data: Path, work: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "solov2.cli", "train", "--config", "solov2_tiny_cpu", "--data-path", str(data),
            "--work-dir", str(work), "--device", "cpu", "--no-eval", "--termination-log", str(work / "term"),
            *extra, "--opts", *OPTS]  # fmt: skip


def _final_weights(work: Path) -> dict[str, torch.Tensor]:
    return torch.load(work / "checkpoints" / "epoch_2.pth", weights_only=False)["model"]


def test_resume_after_kill_matches_an_uninterrupted_run(small_coco, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run(_command(small_coco, straight), check=True, env=env, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_command(small_coco, killed), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    marker = killed / "checkpoints" / "iter_2.pth"  # mid-epoch 1 (4 iterations per epoch)
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "training never reached iteration 2"
    assert not (killed / "checkpoints" / "epoch_2.pth").exists(), "killed too late to test a resume"
    last = (killed / "checkpoints" / "last_checkpoint").read_text().strip()

    resumed = subprocess.run(_command(small_coco, killed, "--resume"), env=env, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"resume: {last}" in resumed.stdout + resumed.stderr

    a, b = _final_weights(straight), _final_weights(killed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
