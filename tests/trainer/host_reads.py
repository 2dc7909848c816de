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
    """Counts the operators dispatched, by name (``aten.add``, ``c10d.broadcast_``); views and ``detach``,
    which launch nothing on a device, are left out."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if not func.is_view and name != "aten.detach":
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))
