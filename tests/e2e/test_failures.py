"""What the operator relies on when a run ends early: the termination message of SIGTERM, of the root
cause among several processes, of a checkpoint from another config; a used work dir; retention."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _train(data: Path, work: Path, log: Path | str, *extra: str, opts: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "solov2.cli", "train", "--config", "solov2_tiny_cpu", "--data-path", str(data),
            "--work-dir", str(work), "--device", "cpu", "--termination-log", str(log), *extra,
            "--opts", "train.log_interval=1", *opts]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)


def test_used_work_dir_retention_counts_and_a_foreign_checkpoint(small_coco, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_coco, data)
    sorted((data / "train2017").iterdir())[5].write_bytes(b"not an image")
    ann = data / "annotations" / "instances_train2017.json"
    coco = json.loads(ann.read_text())
    degenerate = {**coco["annotations"][0], "id": 10_000, "segmentation": [[1, 1, 3, 3]]}  # 2 points
    coco["annotations"].append(degenerate)
    ann.write_text(json.dumps(coco))
    work = tmp_path / "work"
    opts = ("train.epochs=2", "train.checkpoint_interval=1", "train.keep_iter_checkpoints=2",
            "train.epoch_checkpoint_every=2")  # fmt: skip
    # '' disables the termination message: the run succeeds and writes none.
    first = _run(_train(data, work, "", "--no-eval", "--skip-bad-images", opts=opts))
    assert first.returncode == 0, first.stderr
    assert "warning: train.warmup_iters (50) is longer than the run (8 iterations)" in first.stdout
    assert "data: 1 dropped annotations, 1 degenerate polygons, 0 clamped boxes" in first.stdout
    ckpts = work / "checkpoints"
    # 4 iterations per epoch: iter_1..3 and iter_5..7 were written, the newest two kept; epoch_1 was
    # dropped when epoch_2 came (every 2nd epoch kept).
    assert sorted(p.name for p in ckpts.glob("*.pth")) == ["epoch_2.pth", "iter_6.pth", "iter_7.pth"]
    assert (ckpts / "last_checkpoint").read_text().strip() == "epoch_2.pth"
    results = json.loads((work / "results.json").read_text())
    assert results["skipped_images"] == 1
    assert (results["dropped_annotations"], results["degenerate_polygons"], results["clamped_boxes"]) == (
        1,
        1,
        0,
    )

    log = tmp_path / "termination-log"
    again = _run(_train(data, work, log, "--no-eval", opts=opts))
    assert again.returncode == 2
    error = again.stderr.strip().splitlines()[-1]
    assert "--resume" in error and str(ckpts) in error and "epoch_2.pth" in error
    assert json.loads(log.read_text())["retryable"] is False

    # A resume that has nothing left to train (a restart after training ended, e.g. in evaluation)
    # says so and keeps what training measured: the image skipped, its throughput and last losses.
    trained = json.loads((work / "results.json").read_text())
    resumed = _run(_train(data, work, "", "--resume", "--no-eval", "--skip-bad-images", opts=opts))
    assert resumed.returncode == 0, resumed.stderr
    assert (
        "resume: epoch_2.pth: training is complete (2 epochs, iteration 8), nothing to train"
        in resumed.stdout
    )
    again = json.loads((work / "results.json").read_text())
    assert again["skipped_images"] == 1 and again["images_per_second"] == trained["images_per_second"] > 0
    assert again["loss"] == trained["loss"] and (again["epochs"], again["iterations"]) == (2, 8)
    (work / "results.json").unlink()
    fewer = _run(_train(data, work, "", "--resume", "--no-eval", opts=("train.epochs=1",)))
    assert fewer.returncode == 0, fewer.stderr
    assert "(train.epochs=1 is fewer: the checkpoint's training stands)" in fewer.stdout, fewer.stderr
    assert json.loads((work / "results.json").read_text())["epochs"] == 2

    other = _run(_train(data, work, log, "--resume", opts=("model.fpn.out_channels=32", "train.epochs=3")))
    assert other.returncode == 2
    message = json.loads(log.read_text())
    assert message["error_type"] == "WeightsError" and message["retryable"] is False
    assert "model.fpn.out_channels (64 in the checkpoint, 32 now)" in message["error"]
    assert message["error"] in other.stderr and "Traceback" not in other.stderr


def _signal_after_the_first_epoch(
    command: list[str], work: Path, signum: int
) -> tuple[subprocess.Popen[str], str, str]:
    """Run ``command`` in its own process group until its first epoch's checkpoint exists, then send
    ``signum`` to the whole group (as torchrun, or a terminal's Ctrl-C, does); returns the ended process
    and its output (kept in files: a pipe nobody reads while it trains could fill up and stall it)."""
    out, err = work.parent / f"{work.name}.stdout", work.parent / f"{work.name}.stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            command, env=ENV, stdout=stdout, stderr=stderr, text=True, start_new_session=True
        )
        marker = work / "checkpoints" / "epoch_1.pth"
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"training never finished its first epoch: {err.read_text()[-2000:]}"
        os.killpg(proc.pid, signum)
        proc.wait(timeout=60)  # well inside the pods' 180 s grace period
    return proc, out.read_text(), err.read_text()


def test_sigterm_checkpoints_writes_a_retryable_message_and_exits_143(small_coco, tmp_path):
    work, log = tmp_path / "work", tmp_path / "termination-log"
    # A data-loading worker, and the signal sent to the whole process group, as torchrun does.
    command = _train(small_coco, work, log, "--no-eval", opts=("train.epochs=30", "data.workers=1"))
    proc, _, stderr = _signal_after_the_first_epoch(command, work, signal.SIGTERM)
    # The message below names a checkpoint: it stopped in time (after --stop-timeout it would exit
    # without one).
    assert proc.returncode == 143, stderr
    message = json.loads(log.read_text())
    last = (work / "checkpoints" / "last_checkpoint").read_text().strip()
    iteration = int(last.removeprefix("iter_").removesuffix(".pth"))
    assert 4 <= iteration < 120
    assert message == {
        "error": f"terminated by SIGTERM at iteration {iteration}; checkpoint {work / 'checkpoints' / last}",
        "error_type": "Terminated",
        "retryable": True,
    }
    epoch = (iteration - 1) // 4 + 1  # 4 iterations per epoch
    resumed = _run(
        _train(small_coco, work, log, "--resume", "--no-eval", opts=(f"train.epochs={epoch + 1}",))
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resume: {last} at epoch {epoch}, iteration {iteration}" in resumed.stdout + resumed.stderr


def test_ctrl_c_checkpoints_and_exits_130_without_a_traceback(small_coco, tmp_path):
    """A terminal's Ctrl-C (SIGINT to the foreground process group) stops like SIGTERM: at the next
    step boundary, with a checkpoint that --resume continues from."""
    work = tmp_path / "work"
    command = _train(small_coco, work, "", "--no-eval", opts=("train.epochs=30", "data.workers=1"))
    proc, stdout, stderr = _signal_after_the_first_epoch(command, work, signal.SIGINT)
    assert proc.returncode == 130, stderr
    last = (work / "checkpoints" / "last_checkpoint").read_text().strip()
    assert last.startswith("iter_") and "Traceback" not in stderr
    assert (
        f"SIGINT: stopped at iteration {last.removeprefix('iter_').removesuffix('.pth')}" in stdout + stderr
    )
    assert "terminated by SIGINT at iteration" in stderr.strip().splitlines()[-1]


def test_the_root_cause_wins_over_a_peers_consequential_error(small_coco, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_coco, data)
    broken = sorted((data / "train2017").iterdir())[2]
    broken.write_bytes(b"not an image")
    log = tmp_path / "termination-log"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-port", str(_free_port()), "-m", "solov2.cli", "train", "--config", "solov2_tiny_cpu",
               "--data-path", str(data),
               "--work-dir", str(tmp_path / "work"), "--device", "cpu", "--no-eval",
               "--termination-log", str(log), "--opts", "train.epochs=1"]  # fmt: skip
    res = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode != 0
    # The peer did fail too, with a consequential error; it did not overwrite the message.
    assert "Connection closed by peer" in res.stderr or "SIGTERM" in res.stderr
    message = json.loads(log.read_text())
    assert message["error_type"] == "DataError" and message["retryable"] is False
    assert str(broken) in message["error"]
    # torch elastic's error file names the same root cause in torchrun's summary.
    root_cause = res.stderr.split("Root Cause")[1]
    assert "DataError" in root_cause
