"""The optimiser the config names, with its hyper-parameters."""

from __future__ import annotations

import torch

from solov2.config import load_config
from solov2.engine.optim import build_optimizer, describe_optimizer, has_fused_kernel


def test_optimizer_follows_the_config():
    params = [torch.nn.Parameter(torch.ones(3))]
    sgd = build_optimizer(params, load_config("solov2_r50_fpn_1x_coco").train, 0.02)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 0.0001
    cfg = load_config("solov2_r50_fpn_1x_coco", ["train.optimizer=adamw", "train.weight_decay=0.05"]).train
    adamw = build_optimizer(params, cfg, 0.001)
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.defaults["lr"] == 0.001 and adamw.defaults["weight_decay"] == 0.05


def _optimizer_name(cfg_opts: list[str], device_kind: str) -> str:
    params = [torch.nn.Parameter(torch.ones(3))]
    cfg = load_config("solov2_r50_fpn_1x_coco", cfg_opts).train
    return describe_optimizer(build_optimizer(params, cfg, 0.01, device_kind=device_kind))


def test_fused_where_the_device_has_the_kernels():
    # torch ships fused SGD and AdamW kernels for the CPU and CUDA: the dispatcher says so.
    assert has_fused_kernel("sgd", "cpu") and has_fused_kernel("adamw", "cuda")
    assert _optimizer_name([], "cpu") == "torch.optim.SGD (fused)"
    assert _optimizer_name(["train.optimizer=adamw"], "cpu") == "torch.optim.AdamW (fused)"


def test_npu_takes_torchs_fused_kernels_once_torch_npu_registers_them():
    """torch_npu registers its kernels under PrivateUse1 (2.14 has ``_fused_sgd_`` and
    ``_fused_adamw_``). Without them an NPU run uses foreach; with them, the fused optimiser (whose
    skip is exact through the restore path, ``test_train_step``). Here a kernel is registered for
    real, as torch_npu's import does."""
    assert not has_fused_kernel("sgd", "npu")
    assert _optimizer_name([], "npu") == "torch.optim.SGD (foreach)"
    lib = torch.library.Library("aten", "IMPL", "PrivateUse1")
    try:
        lib.impl("_fused_sgd_", lambda *args, **kwargs: None)
        assert has_fused_kernel("sgd", "npu") and not has_fused_kernel("adamw", "npu")
        assert _optimizer_name([], "npu") == "torch.optim.SGD (fused)"
        assert _optimizer_name(["train.optimizer=adamw"], "npu") == "torch.optim.AdamW (foreach)"
    finally:
        lib._destroy()
    assert _optimizer_name([], "npu") == "torch.optim.SGD (foreach)"


def test_a_tensor_learning_rate_only_where_the_fused_kernel_takes_one():
    """torch_npu 2.14.0 registers ``_fused_sgd_.tensor_lr`` but no ``_fused_adamw_.tensor_lr``: a
    compiled NPU run keeps AdamW fused with a float learning rate instead of calling a kernel the
    device lacks; SGD gets its tensor learning rate, as on the CPU."""
    params = [torch.nn.Parameter(torch.ones(3))]
    sgd_cfg = load_config("solov2_r50_fpn_1x_coco").train
    adamw_cfg = load_config("solov2_r50_fpn_1x_coco", ["train.optimizer=adamw"]).train
    cpu = build_optimizer(params, adamw_cfg, 0.01, device_kind="cpu", tensor_lr=True)
    assert isinstance(cpu.param_groups[0]["lr"], torch.Tensor)
    lib = torch.library.Library("aten", "IMPL", "PrivateUse1")
    try:
        for kernel in ("_fused_sgd_", "_fused_sgd_.tensor_lr", "_fused_adamw_"):
            lib.impl(kernel, lambda *args, **kwargs: None)
        sgd = build_optimizer(params, sgd_cfg, 0.01, device_kind="npu", tensor_lr=True)
        adamw = build_optimizer(params, adamw_cfg, 0.01, device_kind="npu", tensor_lr=True)
    finally:
        lib._destroy()
    assert describe_optimizer(sgd) == "torch.optim.SGD (fused)"
    assert isinstance(sgd.param_groups[0]["lr"], torch.Tensor)
    assert describe_optimizer(adamw) == "torch.optim.AdamW (fused)"
    assert adamw.param_groups[0]["lr"] == 0.01 and not isinstance(adamw.param_groups[0]["lr"], torch.Tensor)
