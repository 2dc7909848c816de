"""Mixed precision: autocast dtypes, loss scaling, and NPUs whose fp16 overflows saturate."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from solov2 import amp
from solov2.errors import ConfigError


def test_amp_choices():
    assert amp.amp_dtype("cpu", "auto") is None
    assert amp.amp_dtype("cuda", "auto") is torch.bfloat16
    assert amp.amp_dtype("npu", "auto") is torch.float16
    assert amp.amp_dtype("cuda", "fp16") is torch.float16
    assert amp.amp_dtype("npu", "off") is None
    with pytest.raises(ConfigError, match=r"train.amp: bf16 is for GPUs and NPUs"):
        amp.amp_dtype("cpu", "bf16")


@pytest.mark.filterwarnings("ignore:.*GradScaler is enabled, but CUDA is not available")
def test_fixed_loss_scale_of_128():
    scaler = amp.make_scaler("npu", torch.float16, 128.0)
    assert isinstance(scaler, amp.FixedLossScaler) and scaler.get_scale() == 128.0
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=1.0)
    scaler.scale((p * 2).sum()).backward()
    scaler.unscale_(opt)
    assert torch.equal(p.grad, torch.full((3,), 2.0))
    assert isinstance(amp.make_scaler("cuda", torch.float16, 0.0), torch.amp.GradScaler)
    assert amp.make_scaler("cuda", torch.bfloat16, 0.0) is None


def _fake_inf_nan_query(monkeypatch, supported: bool) -> None:
    """torch_npu's ``torch_npu.npu.utils.is_support_inf_nan``, as the 2.14.0 wheel has it."""
    utils = types.ModuleType("torch_npu.npu.utils")
    utils.is_support_inf_nan = lambda: supported
    monkeypatch.setitem(sys.modules, "torch_npu.npu.utils", utils)


@pytest.mark.filterwarnings("ignore:.*GradScaler is enabled, but")
def test_dynamic_loss_scale_is_refused_where_fp16_overflows_saturate(monkeypatch):
    """A first-generation Ascend 910 saturates fp16 overflows instead of giving inf: a dynamic scale
    would never back off, so it is refused with the fixed scale named; a fixed scale is kept."""
    assert amp.npu_reports_inf_nan() is None  # no torch_npu here: nothing is claimed
    _fake_inf_nan_query(monkeypatch, supported=False)
    assert amp.npu_reports_inf_nan() is False
    assert amp.saturates_fp16("npu", torch.float16)
    assert not amp.saturates_fp16("npu", torch.bfloat16) and not amp.saturates_fp16("cuda", torch.float16)
    with pytest.raises(ConfigError, match=r"train\.loss_scale=128"):
        amp.make_scaler("npu", torch.float16, 0.0)
    assert isinstance(amp.make_scaler("npu", torch.float16, 128.0), amp.FixedLossScaler)
    _fake_inf_nan_query(monkeypatch, supported=True)  # Atlas A2: INF_NAN mode
    assert not amp.saturates_fp16("npu", torch.float16)
    assert isinstance(amp.make_scaler("npu", torch.float16, 0.0), torch.amp.GradScaler)


def test_bf16_is_refused_on_an_npu_without_it(monkeypatch):
    """On a first-generation Ascend 910 torch's autocast only warns about bf16 and runs fp32: a run
    asked for bf16 stops at its start instead, naming what works there."""
    assert amp.amp_dtype("npu", "bf16") is torch.bfloat16  # no torch_npu here: nothing is claimed
    utils = types.ModuleType("torch_npu.npu.utils")
    utils.is_bf16_supported = lambda: False
    monkeypatch.setitem(sys.modules, "torch_npu.npu.utils", utils)
    with pytest.raises(ConfigError, match=r"train.amp: bf16 needs an Ascend 910B.*use fp16"):
        amp.amp_dtype("npu", "bf16")
    assert amp.amp_dtype("npu", "auto") is torch.float16 and amp.amp_dtype("cuda", "bf16") is torch.bfloat16
    utils.is_bf16_supported = lambda: True
    assert amp.amp_dtype("npu", "bf16") is torch.bfloat16
