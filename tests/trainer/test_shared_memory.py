"""The start-up warning when /dev/shm cannot hold the batches the loader workers keep in flight (a
full /dev/shm kills a worker with SIGBUS, as in a container started with Docker's default 64 MiB)."""

from __future__ import annotations

import shutil
from collections import namedtuple

import solov2.data.shared_memory as shm
from solov2.config import load_config
from solov2.data.synthetic import write_synthetic_coco
from solov2.device import setup_runtime
from solov2.engine.train import TrainOptions, _Trainer

Usage = namedtuple("Usage", "total used free")
MiB, GiB = 2**20, 2**30


def _shm_of(monkeypatch, size: int) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(shm.shutil, "disk_usage", lambda p: Usage(size, 0, size) if p == shm.SHM else real(p))


def test_an_r50_batch_is_what_collate_allocates_on_the_largest_canvas():
    cfg = load_config("solov2_r50_fpn_1x_coco", [])
    b, n, (h, w) = 2, cfg.model.targets.max_instances, (1344, 800)
    images, masks = b * 3 * h * w, b * n * (h // 4) * (w // 4)
    per_instance = 4 * 4 + 8 + 1 + 2 * 4 + 8  # box, label, valid, centre, pixel count
    metadata = b * 8 + 2 * b * 2 * 8  # ids, image and original sizes
    assert shm.batch_bytes(cfg) == images + masks + b * n * per_instance + metadata  # 19.0 MiB


def test_docker_default_shm_is_reported_with_the_figures_and_the_fixes(monkeypatch):
    cfg = load_config("solov2_r50_fpn_1x_coco", [])
    _shm_of(monkeypatch, 64 * MiB)
    note = shm.shm_warning(cfg, workers=8, local_processes=8)
    assert note is not None
    assert note.startswith("/dev/shm holds 64 MiB, but the loaders may keep up to 4.7 GiB there")
    assert "8 process(es) x 8 worker(s) x 4 batches ahead x 19 MiB" in note
    assert "--shm-size" in note and "shmSize" in note and "data.workers" in note
    assert shm.shm_warning(cfg, workers=0, local_processes=8) is None  # nothing goes through /dev/shm
    _shm_of(monkeypatch, 8 * GiB)  # the operator's default shmSize
    assert shm.shm_warning(cfg, workers=8, local_processes=8) is None


def test_train_warns_at_start_up(monkeypatch, tmp_path):
    coco = write_synthetic_coco(tmp_path / "coco", train=4, val=0, seed=1)
    cfg = load_config("solov2_tiny_cpu", ["data.workers=2", "data.prefetch_factor=4"])
    opts = TrainOptions(
        data_path=coco, work_dir=tmp_path / "work", device="cpu", evaluate=False, termination_log=None
    )
    lines: list[str] = []
    _shm_of(monkeypatch, MiB)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    _Trainer(cfg, opts, setup_runtime("cpu"), log=lines.append)
    (warning,) = [line for line in lines if "/dev/shm" in line]
    assert warning.startswith("warning: /dev/shm holds 1 MiB, but the loaders may keep up to 4 MiB there")
    lines.clear()
    _shm_of(monkeypatch, 64 * MiB)
    _Trainer(cfg, opts, setup_runtime("cpu"), log=lines.append)
    assert not [line for line in lines if "/dev/shm" in line]


def test_no_shm_no_warning(monkeypatch):
    def missing(_path):
        raise FileNotFoundError("/dev/shm")

    monkeypatch.setattr(shm.shutil, "disk_usage", missing)
    assert shm.shm_warning(load_config("solov2_tiny_cpu", []), workers=4, local_processes=1) is None
