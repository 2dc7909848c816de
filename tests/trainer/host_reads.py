"""Dispatch modes that record what a piece of code asks of the device: reads of a tensor's value back to
the host, and the operators it dispatches."""

from __future__ import annotations

import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class HostReads(TorchDispatchMode):
    """Records every op that copies a tensor's value to the host (``.item()``, ``.tolist()``, ``bool()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


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
