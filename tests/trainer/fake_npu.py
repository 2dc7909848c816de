"""A stand-in for ``torch_npu``, for the NPU paths on machines without Ascend hardware or CANN."""

from __future__ import annotations

import importlib
import importlib.machinery
import types

import torch

from solov2 import device as dev


def fake_torch_npu(
    monkeypatch,
    *,
    import_error: Exception | None = None,
    available: bool = True,
    count: int = 8,
    device_name: str | None = None,
):
    """Install a stand-in `torch_npu`: either one whose import fails (no CANN) or one exposing torch.npu."""
    module = types.ModuleType("torch_npu")
    module.__spec__ = importlib.machinery.ModuleSpec("torch_npu", loader=None)
    calls: list[int] = []
    real_import = importlib.import_module  # the patched one below would call itself
    monkeypatch.setattr(
        dev.importlib.util, "find_spec", lambda name: module.__spec__ if name == "torch_npu" else None
    )

    def fake_import(name):
        if name != "torch_npu":
            return real_import(name)
        if import_error is not None:
            raise import_error
        npu = types.SimpleNamespace(is_available=lambda: available, device_count=lambda: count,
                                    set_device=calls.append)  # fmt: skip
        if device_name is not None:
            npu.get_device_name = lambda index: device_name
        monkeypatch.setattr(torch, "npu", npu, raising=False)
        return module

    monkeypatch.setattr(dev.importlib, "import_module", fake_import)
    return calls
