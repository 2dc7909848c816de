"""Dispatch modes that record what a piece of code asks of the device: reads of a tensor's value back to
the host, and the operators it dispatches."""

from __future__ import annotations

import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class HostReads(TorchDispatchMode):
    """Records every read of a tensor's value by the host: ``.item()``, ``bool()``, ``int()`` and the like
    (``aten._local_scalar_dense``), ``.tolist()``, ``.numpy()`` and NumPy's ``__array__`` (which on the CPU
    read memory without dispatching an operator, so they are wrapped while the mode is active), and a
    copy from an accelerator to the CPU (``.cpu()``, ``.to("cpu")``)."""

    _WRAPPED = ("tolist", "numpy", "__array__")

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []
        self._originals: dict[str, object] = {}

    def __enter__(self):
        for name in self._WRAPPED:
            original = self._originals[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, self._recording(name, original))
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for name, original in self._originals.items():
                setattr(torch.Tensor, name, original)

    def _recording(self, name: str, original):
        def read(tensor, *args, **kwargs):
            self.reads.append(f"Tensor.{name}")
            return original(tensor, *args, **kwargs)

        return read

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads.append(str(func))
        out = func(*args, **kwargs)
        if func.overloadpacket in (torch.ops.aten._to_copy, torch.ops.aten.copy_):
            source = args[1] if func.overloadpacket is torch.ops.aten.copy_ else args[0]
            target = args[0] if func.overloadpacket is torch.ops.aten.copy_ else out
            if source.device.type != "cpu" and target.device.type == "cpu":
                self.reads.append(f"{func} from {source.device}")
        return out


class DispatchedOps(TorchDispatchMode):
    """Counts the aten operators and c10d collectives dispatched, by name (``aten.add``,
    ``c10d.broadcast_``) and by phase (``mark`` names the phase that follows); views and ``detach``,
    which launch nothing on a device, are left out. ``bench/step_ops.py`` counts with it too."""

    def __init__(self, phase: str = "") -> None:
        super().__init__()
        self.phase = phase
        self.counts: collections.Counter[str] = collections.Counter()
        self.by_phase: collections.Counter[str] = collections.Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def mark(self, phase: str) -> None:
        self.phase = phase

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if name.split(".")[0] in ("aten", "c10d") and not func.is_view and name != "aten.detach":
            self.counts[name] += 1
            self.by_phase[self.phase] += 1
        return func(*args, **(kwargs or {}))
