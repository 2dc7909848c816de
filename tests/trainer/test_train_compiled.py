"""``solov2 train --compile``: the training step compiles once and is not compiled again when the
learning rate moves through its warm-up and decay, or when the step's counters are read.

The graphs run through AOTAutograd's eager backend (what inductor would turn into kernels is not this
test's business, and takes minutes on this CPU); everything the trainer hands to ``torch.compile`` is
as in a real run.
"""

from __future__ import annotations

import pytest
import torch

import solov2.engine.parallel as parallel_module
import solov2.engine.step as step_module
from solov2.config import load_config
from solov2.data.synthetic import write_synthetic_coco
from solov2.device import setup_runtime
from solov2.engine.optim import is_fused
from solov2.engine.train import TrainOptions, _Trainer

pytestmark = [pytest.mark.compile, pytest.mark.slow]


class _CountingBackend:
    """Compiles with AOTAutograd's eager backend and counts the graphs Dynamo hands over."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs += 1
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)


def test_the_compiled_step_trains_through_the_schedule_without_recompiling(tmp_path, monkeypatch):
    backend = _CountingBackend()
    real_compile = torch.compile

    def compile_with_counting(fn, **kwargs):
        kwargs.pop("mode", None)  # the default mode; reduce-overhead needs CUDA
        return real_compile(fn, backend=backend, **kwargs)

    monkeypatch.setattr(parallel_module.torch, "compile", compile_with_counting)
    monkeypatch.setattr(step_module.torch, "compile", compile_with_counting)
    torch._dynamo.reset()
    coco = write_synthetic_coco(tmp_path / "coco", train=8, val=0, seed=5)
    cfg = load_config(
        "solov2_tiny_cpu",
        ["data.workers=0", "data.samples_per_device=2", "train.epochs=2",
         "train.warmup_iters=3", "train.lr_steps=[2]", "train.log_interval=2"],
    )  # fmt: skip
    opts = TrainOptions(
        data_path=coco, work_dir=tmp_path / "work", device="cpu", evaluate=False, termination_log=None,
        compile=True,
    )  # fmt: skip
    trainer = _Trainer(cfg, opts, setup_runtime("cpu"), log=lambda _m: None)
    before = [p.detach().clone() for p in trainer.params]
    torch._dynamo.utils.counters.clear()
    results = trainer.run()
    # 8 images in batches of 2, 2 epochs: a warm-up over iterations 1-3, then the base rate; the
    # counters are read every 2 iterations.
    assert results["iterations"] == 8 and results["nonfinite_steps"] == 0
    rates = {round(float(trainer.scheduler.base_lrs[0]) * trainer.lr_factor(i), 8) for i in range(8)}
    assert len(rates) >= 3  # the rate really moved
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.params, strict=True))
    counters = torch._dynamo.utils.counters
    assert sum(counters["graph_break"].values()) == 0
    # Forward + losses (one graph, backward by AOTAutograd) and, unless the optimiser is fused (as
    # torch's AdamW is on the CPU too), the update.
    assert backend.graphs == (1 if is_fused(trainer.optimizer) else 2)
