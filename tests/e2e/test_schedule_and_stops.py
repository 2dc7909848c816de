"""The learning rate a run reports and follows, also when it resumes with another total batch or
base_lr; a SIGTERM that arrives while the last checkpoint is written; a SIGTERM at a periodic
checkpoint; a SIGTERM outside the training loop (start-up, evaluation); the leftovers of a write that
a kill interrupted."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from solov2.cli import main
from solov2.config import load_config
from solov2.device import setup_runtime
from solov2.engine.failures import Terminated
from solov2.engine.sigterm import SigtermStop
from solov2.engine.train import TrainOptions, _Trainer

pytestmark = pytest.mark.slow

# 8 training images, 2 per step: 4 iterations per epoch.
SCHEDULE = ["train.log_interval=1", "train.warmup_factor=0.1", "train.lr_steps=[]", "train.base_lr=0.001"]


def _train(data: Path, work: Path, *extra: str, opts: list[str]) -> None:
    argv = ["train", "--config", "solov2_tiny_cpu", "--data-path", str(data), "--work-dir", str(work),
            "--device", "cpu", "--no-eval", "--termination-log", "", *extra, "--opts", *SCHEDULE, *opts]  # fmt: skip
    assert main(argv) == 0


def _rates(out: str) -> dict[int, float]:
    """Learning rate of each logged iteration, as the progress lines show it."""
    return {int(m[1]): float(m[2]) for m in re.finditer(r"iter (\d+)/\d+ .*? lr (\S+)", out)}


def test_the_logged_rate_is_the_one_the_step_trained_with(small_coco, tmp_path, capsys):
    _train(small_coco, tmp_path / "w", opts=["train.epochs=1", "train.warmup_iters=4"])
    rates = _rates(capsys.readouterr().out)
    # base_lr 0.001 for base_batch_size 2; warm-up from 0.1x over 4 iterations: 0.1, 0.325, 0.55, 0.775
    assert rates == pytest.approx({1: 1e-4, 2: 3.25e-4, 3: 5.5e-4, 4: 7.75e-4}, rel=1e-2)


def test_a_resume_with_another_total_batch_and_base_lr_keeps_the_epochs_and_follows_the_new_rate(
    small_coco, tmp_path, capsys
):
    work = tmp_path / "w"
    _train(small_coco, work, opts=["train.epochs=1", "train.warmup_iters=1"])
    capsys.readouterr()
    # Twice the images per step and a base_lr of 0.004: 2 iterations per epoch, rate 0.004 x 4 / 2.
    resumed = ["train.epochs=2", "train.warmup_iters=1", "data.samples_per_device=4", "train.base_lr=0.004"]
    _train(small_coco, work, "--resume", opts=resumed)
    out = capsys.readouterr().out
    assert "resume: the checkpoint was written with a total batch of 2 (1 processes), now 4" in out
    assert "resume: learning rate 0.008 (the checkpoint's run had 0.001)" in out
    assert _rates(out) == pytest.approx({3: 0.008, 4: 0.008})
    results = json.loads((work / "results.json").read_text())
    assert results["iterations"] == 4  # epoch 1 = iterations 1-2 at the new batch, epoch 2 = 3-4


def _trainer(data: Path, work: Path, *opts: str) -> _Trainer:
    cfg = load_config("solov2_tiny_cpu", ["train.log_interval=1", *opts])
    options = TrainOptions(data_path=data, work_dir=work, device="cpu", evaluate=True, termination_log=None)
    (work / "checkpoints").mkdir(parents=True)
    return _Trainer(
        cfg,
        options,
        setup_runtime("cpu"),
        log=lambda _m: None,
        sigterm=SigtermStop(lambda: "", timeout_s=60.0, on_timeout=lambda _text: None),
    )


def test_a_sigterm_during_the_last_checkpoint_stops_before_the_evaluation(small_coco, tmp_path):
    trainer = _trainer(small_coco, tmp_path / "w", "train.epochs=1")
    save, saved = trainer.save, []

    def save_then_signal(name: str) -> Path:
        saved.append(name)
        if name == "epoch_1.pth":
            assert trainer.sigterm is not None
            trainer.sigterm.requested = True  # as the handler does while training defers the stop
        return save(name)

    trainer.save = save_then_signal  # type: ignore[method-assign]
    trainer.evaluate = lambda: pytest.fail("evaluated after SIGTERM")  # type: ignore[method-assign]
    with pytest.raises(Terminated, match=r"at iteration 4; checkpoint .*epoch_1\.pth"):
        trainer.run()
    assert saved == ["epoch_1.pth"]


def test_a_sigterm_at_a_periodic_checkpoint_writes_it_once(small_coco, tmp_path):
    trainer = _trainer(small_coco, tmp_path / "w", "train.epochs=1", "train.checkpoint_interval=2")
    save, saved = trainer.save, []

    def save_then_signal(name: str) -> Path:
        saved.append(name)
        assert trainer.sigterm is not None
        trainer.sigterm.requested = True
        return save(name)

    trainer.save = save_then_signal  # type: ignore[method-assign]
    with pytest.raises(Terminated, match=r"at iteration 2; checkpoint .*iter_2\.pth"):
        trainer.run()
    assert saved == ["iter_2.pth"]


@pytest.mark.parametrize("phase", ["restore", "evaluate"])
def test_a_sigterm_outside_the_training_loop_stops_at_once(small_coco, tmp_path, phase):
    """Start-up (restoring a checkpoint) and evaluation have no step boundary to wait for."""
    trainer = _trainer(small_coco, tmp_path / "w", "train.epochs=1")
    assert trainer.sigterm is not None

    def signalled(*_args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the work that would go on
        pytest.fail(f"{phase} went on after SIGTERM")

    setattr(trainer, phase, signalled)
    trainer.sigterm.install()
    try:
        with pytest.raises(Terminated):
            trainer.run()
    finally:
        trainer.sigterm.uninstall()
    assert trainer.iteration == (0 if phase == "restore" else 4)


def test_unfinished_checkpoint_writes_are_removed_at_the_start(small_coco, tmp_path):
    work = tmp_path / "w"
    ckpt = work / "checkpoints"
    ckpt.mkdir(parents=True)
    partial = [ckpt / ".iter_6.pth.k2j4x1.tmp", ckpt / ".last_checkpoint.a8b9c0.tmp"]
    kept = [ckpt / ".notes.tmp", ckpt / "iter_6.pth.bak"]
    for path in partial + kept:
        path.write_bytes(b"x" * 10)
    _train(small_coco, work, "--resume", opts=["train.epochs=1"])
    assert not any(p.exists() for p in partial) and all(p.exists() for p in kept)


def test_a_missing_val_split_is_said_at_the_start_and_an_empty_one_is_not_scored(small_coco, tmp_path):
    """A typo in the data set shows before the training, not after it; an empty split gives no AP of
    0 that would pass for a result."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small_coco, data)
    val = data / "annotations" / "instances_val2017.json"
    coco = json.loads(val.read_text())
    val.write_text(json.dumps({**coco, "images": [], "annotations": []}))
    lines: list[str] = []
    cfg = load_config("solov2_tiny_cpu", ["train.epochs=1"])
    options = TrainOptions(
        data_path=data, work_dir=tmp_path / "w", device="cpu", evaluate=True, termination_log=None
    )
    (options.work_dir / "checkpoints").mkdir(parents=True)
    results = _Trainer(cfg, options, setup_runtime("cpu"), log=lines.append).run()
    assert f"evaluation skipped: {val}: no images to evaluate" in lines and "segm_AP" not in results
    val.unlink()
    lines.clear()
    resumed = TrainOptions(**{**options.__dict__, "resume": True})
    _Trainer(cfg, resumed, setup_runtime("cpu"), log=lines.append).run()
    warning = (
        f"warning: no {val}: the evaluation after training will be skipped (--no-eval trains without one)"
    )
    assert lines.index(warning) < lines.index(f"evaluation skipped: no {val}")


def test_a_resume_on_another_number_of_images_says_so(small_coco, tmp_path):
    """The synthetic set has background images: filtering them changes the images per epoch."""
    work = tmp_path / "w"
    _train(small_coco, work, opts=["train.epochs=1"])
    lines: list[str] = []
    cfg = load_config("solov2_tiny_cpu", ["train.epochs=1", "data.filter_empty_gt=true"])
    options = TrainOptions(data_path=small_coco, work_dir=work, device="cpu", evaluate=False, termination_log=None,
                           resume=True)  # fmt: skip
    trainer = _Trainer(cfg, options, setup_runtime("cpu"), log=lines.append)
    trainer.restore()
    kept = len(trainer.dataset)
    assert kept < 8
    assert (
        f"warning: resume: the checkpoint's run trained on 8 images per epoch, this one has {kept} (another "
        "data set, or data.filter_empty_gt): the epoch in progress goes on at the checkpoint's iteration, in "
        "the new data's batches"
    ) in lines


def test_max_iters_stops_inside_an_epoch_on_the_full_schedule_and_a_higher_limit_goes_on(
    small_coco, tmp_path, capsys
):
    work = tmp_path / "w"
    # 2 epochs of 4 iterations, the rate decayed x0.1 after epoch 1; stop at iteration 6 of 8.
    schedule = ["train.epochs=2", "train.warmup_iters=0", "train.lr_steps=[1]"]
    _train(small_coco, work, opts=[*schedule, "train.max_iters=6"])
    out = capsys.readouterr().out
    assert "4 iterations/epoch x 2 epochs, stopping at iteration 6 (train.max_iters)" in out
    assert "iter 6/6 " in out and "iter 7/" not in out
    assert _rates(out) == pytest.approx({1: 1e-3, 2: 1e-3, 3: 1e-3, 4: 1e-3, 5: 1e-4, 6: 1e-4})
    assert f"train.max_iters=6 reached in epoch 2: checkpoint {work / 'checkpoints' / 'iter_6.pth'}" in out
    results = json.loads((work / "results.json").read_text())
    assert (results["epochs"], results["iterations"]) == (1, 6)
    assert results["checkpoint"] == str(work / "checkpoints" / "iter_6.pth")
    assert results["images_per_second"] > 0

    _train(small_coco, work, "--resume", opts=[*schedule, "train.max_iters=6"])
    assert "resume: iter_6.pth: train.max_iters=6 is reached (iteration 6), nothing to train" in (
        capsys.readouterr().out
    )

    _train(small_coco, work, "--resume", opts=schedule)  # no limit: the rest of epoch 2
    out = capsys.readouterr().out
    assert "resume: iter_6.pth at epoch 2, iteration 6" in out
    assert _rates(out) == pytest.approx({7: 1e-4, 8: 1e-4})
    results = json.loads((work / "results.json").read_text())
    assert (results["epochs"], results["iterations"]) == (2, 8)
    assert results["checkpoint"] == str(work / "checkpoints" / "epoch_2.pth")


def test_max_iters_at_an_epoch_end_writes_the_epoch_checkpoint_only(small_coco, tmp_path, capsys):
    work = tmp_path / "w"
    _train(small_coco, work, opts=["train.epochs=3", "train.warmup_iters=0", "train.max_iters=4"])
    assert "reached in epoch" not in capsys.readouterr().out
    assert sorted(p.name for p in (work / "checkpoints").glob("*.pth")) == ["epoch_1.pth"]
    results = json.loads((work / "results.json").read_text())
    assert (results["epochs"], results["iterations"], results["checkpoint"]) == (
        1, 4, str(work / "checkpoints" / "epoch_1.pth"),
    )  # fmt: skip


def test_a_resume_renumbered_by_another_batch_names_the_checkpoint_it_resumed_from(
    small_coco, tmp_path, capsys
):
    work = tmp_path / "w"
    schedule = ["train.epochs=2", "train.warmup_iters=0"]
    _train(small_coco, work, opts=[*schedule, "train.max_iters=6"])  # 4 images into epoch 2: iter_6.pth
    capsys.readouterr()
    # Twice the images per step: those 4 images are 1 batch of 4, and the run stands at iteration 3.
    _train(small_coco, work, "--resume", opts=[*schedule, "train.max_iters=3", "data.samples_per_device=4"])
    assert "train.max_iters=3 is reached (iteration 3), nothing to train" in capsys.readouterr().out
    results = json.loads((work / "results.json").read_text())
    assert results["iterations"] == 3 and results["checkpoint"] == str(work / "checkpoints" / "iter_6.pth")
