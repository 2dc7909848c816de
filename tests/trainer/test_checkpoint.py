"""Checkpoints are written atomically, found again, and fine-tuning loads what fits."""

from __future__ import annotations

import pytest
import torch

from solov2.config import load_config, to_dict
from solov2.engine.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_model_weights,
    load_weights,
    prune_checkpoints,
    read_config,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from solov2.errors import WeightsError
from solov2.model.solov2 import SOLOv2


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((2,), value)}, "optimizer": {}, "epoch": 1, "iteration": 5}


def test_save_is_atomic_and_last_checkpoint_names_the_newest(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "epoch_1.pth", _state(1.0))
    save_checkpoint(tmp_path / "iter_7.pth", _state(2.0))
    assert latest_checkpoint(tmp_path) == tmp_path / "iter_7.pth"

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "iter_7.pth", _state(3.0))
    monkeypatch.undo()
    # The old file is intact, the marker unchanged, and no temporary file is left behind.
    assert torch.equal(load_checkpoint(tmp_path / "iter_7.pth")["model"]["w"], torch.full((2,), 2.0))
    assert latest_checkpoint(tmp_path) == tmp_path / "iter_7.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_1.pth", "iter_7.pth", "last_checkpoint"]


def test_unreadable_or_foreign_checkpoints_are_clear_errors(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="cannot read"):
        load_checkpoint(bad)
    torch.save({"weights": 1}, tmp_path / "foreign.pth")
    with pytest.raises(WeightsError, match="not a solov2 training checkpoint"):
        load_checkpoint(tmp_path / "foreign.pth")
    with pytest.raises(WeightsError, match="holds no config; pass --config"):
        read_config(tmp_path / "foreign.pth")
    (tmp_path / "last_checkpoint").write_text("gone.pth\n")
    with pytest.raises(WeightsError, match=r"gone\.pth, which does not exist"):
        latest_checkpoint(tmp_path)


def test_a_work_dir_or_an_onnx_file_given_as_checkpoint_names_what_to_pass(tmp_path):
    work = tmp_path / "work"
    save_checkpoint(work / "checkpoints" / "epoch_1.pth", _state(1.0))
    with pytest.raises(
        WeightsError, match=r"a directory without last_checkpoint \(a work dir\? its checkpoints"
    ):
        read_config(work)
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x09onnx")
    with pytest.raises(WeightsError, match=r"\(an ONNX model: pass it with --onnx\)"):
        read_config(onnx)


def test_load_from_skips_layers_whose_shape_changed(tmp_path):
    source = SOLOv2(load_config("solov2_tiny_cpu"))
    torch.save(
        {"model": source.state_dict(), "optimizer": {}, "epoch": 3, "iteration": 9}, tmp_path / "c.pth"
    )
    target = SOLOv2(load_config("solov2_tiny_cpu", ["model.head.num_classes=5"]))
    skipped = load_weights(target, tmp_path / "c.pth")
    assert skipped == ["head.conv_cls.bias", "head.conv_cls.weight"]
    assert torch.equal(target.backbone.layer2[0].conv1.weight, source.backbone.layer2[0].conv1.weight)
    assert target.head.conv_cls.weight.shape[0] == 5
    # Weights of another backbone: the error names what differs in the config the checkpoint holds.
    tiny = load_config("solov2_tiny_cpu")
    torch.save({"model": source.state_dict(), "config": to_dict(tiny)}, tmp_path / "tiny.pth")
    # (frozen stages and the class count do not make weights mismatch: not named)
    r50 = load_config(
        "solov2_tiny_cpu",
        ["model.backbone.depth=50", "model.head.num_classes=5", "model.backbone.frozen_stages=1"],
    )
    with pytest.raises(WeightsError, match=r"does not match this model .*; its config differs in "
                       r"model\.backbone\.depth \(18 in the checkpoint, 50 now\)$"):  # fmt: skip
        load_weights(SOLOv2(r50), tmp_path / "tiny.pth", to_dict(r50))
    # Evaluation needs an exact match and says which config to use.
    with pytest.raises(WeightsError, match="pass the --config it was trained with"):
        load_model_weights(
            SOLOv2(load_config("solov2_tiny_cpu", ["model.fpn.out_channels=32"])), tmp_path / "c.pth"
        )


def test_retention_keeps_the_newest_iteration_checkpoints_and_every_nth_epoch(tmp_path):
    names = ["iter_3.pth", "iter_12.pth", "iter_25.pth", "iter_30.pth", "epoch_1.pth", "epoch_2.pth",
             "epoch_3.pth", "epoch_4.pth", "epoch_5.pth", "diverged_iter_9.pth", "notes.pth"]  # fmt: skip
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "last_checkpoint").write_text("iter_3.pth\n")  # named by the marker: never deleted
    deleted = prune_checkpoints(tmp_path, keep_iter=2, epoch_every=2)
    assert sorted(p.name for p in deleted) == ["epoch_1.pth", "epoch_3.pth", "iter_12.pth"]
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == sorted(
        [
            "iter_3.pth",
            "iter_25.pth",
            "iter_30.pth",
            "epoch_2.pth",
            "epoch_4.pth",
            "epoch_5.pth",
            "diverged_iter_9.pth",
            "notes.pth",
        ]
    )


def test_the_total_batch_of_a_checkpoint_comes_from_its_config_and_process_count():
    from solov2.engine.train import _total_batch

    assert _total_batch({"world_size": 8, "config": {"data": {"samples_per_device": 2}}}) == 16
    assert _total_batch({"config": {"data": {"samples_per_device": 2}}}) is None


def test_checkpoints_get_the_mode_a_plain_open_gives(tmp_path):
    """Not mkstemp's 0600: a checkpoint or an exported model on a shared volume is readable by others
    as far as the umask allows."""
    import stat

    from solov2.atomic import write_atomically

    write_atomically(tmp_path / "atomic", lambda f: f.write(b"x"))
    (tmp_path / "plain").write_bytes(b"x")
    modes = [stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("atomic", "plain")]
    assert modes[0] == modes[1]


def test_a_cuda_random_state_restores_with_fewer_devices_visible(monkeypatch):
    """Rank 0 of an 8-GPU pod saves its generators; a resume with 4 GPUs per pod (or on a one-GPU box)
    restores them on every rank. Each process keeps its current device's CUDA state only (torch's
    set_rng_state_all of 8 states fails with IndexError where fewer devices are visible)."""
    current = {"state": torch.tensor([7], dtype=torch.uint8)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": current["state"].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": current.update(state=state))
    saved = rng_state()
    assert torch.equal(saved["cuda"], torch.tensor([7], dtype=torch.uint8))
    current["state"] = torch.tensor([0], dtype=torch.uint8)
    restore_rng(saved)
    assert current["state"].tolist() == [7]
    earlier = {**saved, "cuda": [torch.tensor([k], dtype=torch.uint8) for k in range(3, 11)]}  # 8 devices
    restore_rng(earlier)
    assert current["state"].tolist() == [3]
