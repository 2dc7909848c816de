"""How many CPUs this process may use, and how many data-loading workers that affords.

A pod's CPU limit is a cgroup quota, not a smaller CPU set: ``os.cpu_count()`` still reports every CPU of
the node. The quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) and the
affinity mask (``os.sched_getaffinity``) both bound what the process really gets.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["MAX_AUTO_WORKERS", "available_cpus", "default_workers", "node_processes"]

MAX_AUTO_WORKERS = 8
"""About what one accelerator needs (bench/data_pipeline.py); more workers only cost memory."""


def _cgroup_quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup quota under ``root`` (``/sys/fs/cgroup``), None if unlimited/unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup quota (rounded up), >= 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def node_processes() -> int:
    """Training processes on this node: torchrun's ``LOCAL_WORLD_SIZE``, else 1."""
    return int(os.environ.get("LOCAL_WORLD_SIZE") or 1)


def default_workers(local_processes: int | None = None, cpus: int | None = None) -> int:
    """Workers per training process: the CPUs shared among the node's ``local_processes`` (default
    ``LOCAL_WORLD_SIZE`` from torchrun, else 1), one kept for the process itself, at most
    :data:`MAX_AUTO_WORKERS`; 0 (load in the process) when a process has a single CPU."""
    if local_processes is None:
        local_processes = node_processes()
    cpus = available_cpus() if cpus is None else cpus
    return max(0, min(MAX_AUTO_WORKERS, cpus // max(local_processes, 1) - 1))
