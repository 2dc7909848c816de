"""A saturation-mode NPU (first-generation Ascend 910) raises a flag in its float status register on an
fp16 overflow instead of giving inf/NaN. The step reads that flag on the device and skips the step
exactly, with no host read; several processes agree through an all-reduce. torch_npu is stood in for
by its two status operators, with the semantics torch_npu's own overflow check relies on."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from solov2 import amp
from solov2.config import load_config
from solov2.engine import step as step_module
from solov2.engine.counters import StepCounters
from solov2.engine.optim import build_optimizer, init_state
from solov2.engine.step import TrainStep

from .host_reads import HostReads


class _FakeStatusRegister:
    """``torch_npu.npu_clear_float_status`` / ``npu_get_float_status`` over one register."""

    def __init__(self) -> None:
        self.register = torch.zeros(8)
        self.module = types.ModuleType("torch_npu")
        self.module.npu_clear_float_status = lambda buf: self.register.zero_()
        self.module.npu_get_float_status = lambda buf: self.register.clone()

    def overflow(self) -> None:
        self.register[0] = 1.0


@pytest.fixture
def status_register(monkeypatch) -> _FakeStatusRegister:
    fake = _FakeStatusRegister()
    monkeypatch.setitem(sys.modules, "torch_npu", fake.module)
    return fake


def _step(status: amp.OverflowStatus | None, distributed: bool = False) -> tuple[TrainStep, torch.nn.Linear]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    cfg = load_config("solov2_r50_fpn_1x_coco").train  # fused SGD, as on an NPU
    params = list(model.parameters())
    optimizer = build_optimizer(params, cfg, 0.1)
    init_state(optimizer)
    x = torch.randn(5, 4)

    def forward(images, gt):
        return {"loss_toy": model(x).square().mean(), "dropped_positives": torch.zeros((), dtype=torch.int64)}

    step = TrainStep(forward, optimizer, params, device_kind="cpu", dtype=None,
                     scaler=amp.FixedLossScaler(128.0), grad_clip=35.0, counters=StepCounters("cpu"),
                     overflow=status, distributed=distributed)  # fmt: skip
    return step, model


def test_an_overflowing_backward_skips_the_step_without_a_host_read(status_register):
    step, model = _step(amp.OverflowStatus(torch.device("cpu")))
    status_register.overflow()  # left over from before the step: cleared before the backward pass
    reads = HostReads()
    with reads:
        step(None, None, 1)
    after_first = [p.detach().clone() for p in model.parameters()]
    hook = model.weight.register_hook(lambda grad: status_register.overflow())  # overflows in backward
    with reads:
        step(None, None, 2)
    hook.remove()
    assert all(torch.equal(a, p) for a, p in zip(after_first, model.parameters(), strict=True))
    with reads:
        step(None, None, 3)
    assert any(not torch.equal(a, p) for a, p in zip(after_first, model.parameters(), strict=True))
    assert reads.reads == []
    counts = step.counters.read()
    assert (counts.nonfinite, counts.first_nonfinite, counts.last_nonfinite) == (1, 2, 2)


@pytest.mark.parametrize("status", [True, False], ids=["npu-overflow-flag", "loss-only"])
def test_a_bad_step_on_another_rank_skips_the_step_here(status_register, monkeypatch, status):
    """The gradients are all-reduced, the loss and the overflow flag are not: one all-reduce (max) of
    "non-finite loss or overflow" makes every rank skip what any rank saw. Here this rank saw nothing,
    another one did."""
    reduced = []

    def all_reduce(tensor, op):
        reduced.append(op)
        tensor.fill_(1.0)

    monkeypatch.setattr(step_module.dist, "all_reduce", all_reduce)
    step, model = _step(amp.OverflowStatus(torch.device("cpu")) if status else None, distributed=True)
    before = [p.detach().clone() for p in model.parameters()]
    reads = HostReads()
    with reads:
        step(None, None, 1)
    assert reduced == [step_module.dist.ReduceOp.MAX] and reads.reads == []
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert step.counters.read().nonfinite == 1
    monkeypatch.setattr(step_module.dist, "all_reduce", lambda tensor, op: None)  # no rank saw anything
    step(None, None, 2)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_the_status_is_read_only_where_fp16_overflows_saturate(monkeypatch):
    monkeypatch.setattr(amp, "npu_reports_inf_nan", lambda: False)
    assert amp.overflow_status("npu", torch.bfloat16, torch.device("cpu")) is None
    assert amp.overflow_status("cuda", torch.float16, torch.device("cpu")) is None
    monkeypatch.setitem(sys.modules, "torch_npu", _FakeStatusRegister().module)
    assert isinstance(amp.overflow_status("npu", torch.float16, torch.device("cpu")), amp.OverflowStatus)
    monkeypatch.setattr(amp, "npu_reports_inf_nan", lambda: True)  # Atlas A2: inf/NaN show overflows
    assert amp.overflow_status("npu", torch.float16, torch.device("cpu")) is None
