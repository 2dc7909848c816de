"""A stand-in for ``torch_npu``, for the NPU paths on machines without Ascend hardware or CANN."""

from __future__ import annotations

import importlib
import importlib.machinery
import types

import torch

from solov2 import device as dev


def fake_torch_npu(
    monkeypatch, *, import_error: Exception | None = None, available: bool = True, count: int = 8
):
    """Install a stand-in `torch_npu`: either one whose import fails (no CANN) or one exposing torch.npu."""
    module = types.ModuleType("torch_npu")
    module.__spec__ = importlib.machinery.ModuleSpec("torch_npu", loader=None)
    calls: list[int] = []
    monkeypatch.setattr(
        dev.importlib.util, "find_spec", lambda name: module.__spec__ if name == "torch_npu" else None
    )

    def fake_import(name):
        if name != "torch_npu":
            return importlib.import_module(name)
        if import_error is not None:
            raise import_error
        npu = types.SimpleNamespace(is_available=lambda: available, device_count=lambda: count,
                                    set_device=calls.append)  # fmt: skip
        monkeypatch.setattr(torch, "npu", npu, raising=False)
        return module

    monkeypatch.setattr(dev.importlib, "import_module", fake_import)
    return calls
