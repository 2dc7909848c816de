"""Two gloo processes on the CPU train one model: their parameters stay identical and do change, and
both evaluate the model the checkpoint holds.

(BatchNorm running statistics are buffers, not parameters: in the tiny config they train, so rank 0's
are broadcast before each forward, then each rank updates them with its own batch, as in any DDP run
without SyncBatchNorm, which gloo lacks. Checkpoints hold rank 0's, and so does every rank's model when
the evaluation after training starts.)
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from solov2.config import load_config
from solov2.device import setup_runtime, shutdown
from solov2.engine.counters import StepCounters
from solov2.engine.splits import distinct_over_ranks, sum_over_ranks, union_over_ranks
from solov2.engine.train import TrainOptions, _Trainer

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))  # fmt: skip
    torch.set_num_threads(1)
    cfg = load_config("solov2_tiny_cpu", ["train.epochs=1", "train.log_interval=1"])
    opts = TrainOptions(
        data_path=Path(data),
        work_dir=Path(out),
        device="cpu",
        evaluate=True,
        termination_log=None,
        skip_bad_images=True,  # each checkpoint write gathers the bad images of both processes
    )
    runtime = setup_runtime("cpu")
    try:
        trainer = _Trainer(cfg, opts, runtime, log=lambda _m: None)
        initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        trainer.run()
        params = {name for name, _ in trainer.model.named_parameters()}
        state = trainer.model.state_dict()
        final = {k: v for k, v in state.items() if k in params}
        statistics = {k: v for k, v in state.items() if "running_" in k}
        torch.save({"initial": {k: v for k, v in initial.items() if k in params}, "final": final,
                    "statistics": statistics, "iterations": trainer.iteration},
                   Path(out) / f"rank{rank}.pt")  # fmt: skip
    finally:
        shutdown(runtime)


def test_two_gloo_ranks_train_the_same_parameters(small_coco, tmp_path):
    mp.start_processes(_worker, args=(2, _free_port(), str(small_coco), str(tmp_path)), nprocs=2,
                       start_method="spawn")  # fmt: skip
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    # 8 images, 2 per rank and step: 2 steps each.
    assert r0["iterations"] == r1["iterations"] == 2
    changed = [k for k in r0["final"] if not torch.equal(r0["final"][k], r0["initial"][k])]
    assert any(k.startswith("head.") for k in changed) and any(k.startswith("backbone.") for k in changed)
    for key in r0["final"]:
        assert torch.equal(r0["initial"][key], r1["initial"][key]), f"{key} initialised differently"
        assert torch.allclose(r0["final"][key], r1["final"][key], rtol=0, atol=1e-6), (
            f"{key} diverged across ranks"
        )
    # Rank 0 alone wrote the checkpoint; both ranks evaluated what it holds.
    state = torch.load(tmp_path / "checkpoints" / "epoch_1.pth", weights_only=False)
    assert state["bad_image_ids"] == []
    checkpoint = state["model"]
    assert r0["statistics"] and r0["statistics"].keys() == r1["statistics"].keys()
    for key, value in checkpoint.items():
        if "running_" in key:
            assert torch.equal(r0["statistics"][key], value) and torch.equal(r1["statistics"][key], value), (
                key
            )


def _count_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))  # fmt: skip
    runtime = setup_runtime("cpu")
    try:
        # Image 0 was bad for both processes (they met it in different epochs), 1 and 2 for one each.
        flags = torch.tensor([[1, 0, 1, 0], [1, 1, 0, 0]][rank], dtype=torch.uint8)
        union = union_over_ranks(flags, runtime).tolist()
        # Instances truncated by each process's loader, positives each process's targets dropped.
        truncated = sum_over_ranks(10 * (rank + 1), runtime)
        counters = StepCounters("cpu")
        counters.add(finite=torch.tensor(True), dropped=torch.tensor(rank + 2), iteration=1)
        dropped = counters.read(distributed=True).dropped_positives
        (Path(out) / f"count{rank}").write_text(
            f"{distinct_over_ranks(flags, runtime)} {union} {truncated} {dropped}"
        )
    finally:
        shutdown(runtime)


def test_counts_over_processes_bad_images_once_and_truncations_and_drops_summed(tmp_path):
    mp.start_processes(_count_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    assert [(tmp_path / f"count{r}").read_text() for r in (0, 1)] == ["3 [1, 1, 1, 0] 30 5"] * 2
