"""Prometheus metrics of a real training run: scraped while it trains, the values move."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def test_metrics_move_during_training(small_coco, tmp_path):
    port = _free_port()
    cmd = [sys.executable, "-m", "solov2.cli", "train", "--config", "solov2_tiny_cpu", "--data-path", str(small_coco),
           "--work-dir", str(tmp_path), "--device", "cpu", "--metrics-port", str(port), "--termination-log",
           str(tmp_path / "term"), "--opts", "train.epochs=3", "train.log_interval=1"]  # fmt: skip
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    seen: list[dict[str, float]] = []
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                sample = _scrape(port)
            except OSError:
                time.sleep(0.1)
                continue
            if sample.get("solov2_train_iteration", 0) > 0 and (
                not seen or sample["solov2_train_iteration"] != seen[-1]["solov2_train_iteration"]
            ):
                seen.append(sample)
            if sample.get("solov2_train_finished") == 1:
                break
            time.sleep(0.05)
    finally:
        proc.wait(timeout=240)
    output = proc.stdout.read() if proc.stdout else ""
    assert proc.returncode == 0, output
    assert len(seen) >= 2, f"saw {len(seen)} distinct iterations while training"
    first, last = seen[0], seen[-1]
    assert last["solov2_train_iteration"] > first["solov2_train_iteration"]
    assert first["solov2_train_total_iterations"] == 12  # 8 images / batch 2 x 3 epochs
    assert first["solov2_train_total_epochs"] == 3
    assert last["solov2_train_images_per_second"] > 0
    assert last["solov2_train_learning_rate"] > 0
    assert last["solov2_train_loss{component=total}"] > 0
    assert {last["solov2_train_loss{component=cls}"], last["solov2_train_loss{component=mask}"]} != {0.0}
    assert last["solov2_train_epoch"] >= first["solov2_train_epoch"] >= 1
    info = "solov2_train_info{config=solov2_tiny_cpu,device=cpu,optimizer=torch.optim.AdamW (fused),world_size=1}"
    assert info in last
