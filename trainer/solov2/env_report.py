"""``solov2 env``: what this machine or pod gives the trainer, checked before a long run.

Versions, the device ``--device`` picks and why an NPU is not used (or what the NPUs can do), the
process-group backends, the fused optimiser kernels of that device, the CPUs this process may use and
the loader workers they afford, ``/dev/shm`` against what the loaders keep there, and the distributed
environment torchrun or the operator set. Nothing is downloaded, nothing is written.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

import torch
import torch.distributed as dist

from . import __version__
from .amp import npu_reports_inf_nan, npu_supports_bf16
from .config import Config
from .data.cpus import available_cpus, node_processes
from .data.loader import resolve_workers
from .data.shared_memory import SHM, shm_size, shm_warning
from .device import BACKENDS, DIST_TIMEOUT_ENV, detect_device_kind, dist_timeout_s, npu_status
from .engine.optim import has_fused_kernel

__all__ = ["environment_report", "format_report"]

_PACKAGES = (
    "torch",
    "torchvision",
    "torch_npu",
    "numpy",
    "opencv-python-headless",
    "opencv-python",
    "pycocotools",
)
_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
        DIST_TIMEOUT_ENV, "HCCL_CONNECT_TIMEOUT", "HCCL_EXEC_TIMEOUT", "HCCL_IF_IP", "ASCEND_RT_VISIBLE_DEVICES",
        "CUDA_VISIBLE_DEVICES", "NCCL_SOCKET_IFNAME", "OMP_NUM_THREADS")  # fmt: skip


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _backend_available(backend: str) -> bool:
    if backend == "hccl":  # torch_npu registers it once imported
        return "hccl" in dist.Backend.backend_list
    return bool(getattr(dist, f"is_{backend}_available")())


def _cuda() -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"available": False}
    return {
        "available": True,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "bf16": torch.cuda.is_bf16_supported(),
        "cuda": torch.version.cuda,
    }


def _npu(usable: bool, why: str) -> dict[str, Any]:
    """Whether torch_npu can use NPUs (else why not) and, if it can, their names, bf16 (a 910B and later)
    and what an fp16 overflow gives (inf/NaN, or saturation on a first-generation 910)."""
    if not usable:
        return {"usable": False, "why": why}
    try:
        names = [torch.npu.get_device_name(i) for i in range(torch.npu.device_count())]  # type: ignore[attr-defined]
    except Exception:  # a torch_npu without the query
        names = []
    inf_nan = npu_reports_inf_nan()
    overflow = None if inf_nan is None else "inf/nan" if inf_nan else "saturates"
    return {
        "usable": True,
        "why": why,
        "devices": names,
        "bf16": npu_supports_bf16(),
        "fp16_overflow": overflow,
    }


def environment_report(cfg: Config, device: str = "auto") -> dict[str, Any]:
    """The report as a dict. ``device`` as ``--device``: an explicit kind that is not usable raises
    :class:`~solov2.errors.ConfigError`. ``cfg``'s batches and loader settings size the ``/dev/shm`` check."""
    kind = detect_device_kind(device)
    npu_ok, npu_why = npu_status()
    local_processes, workers = node_processes(), resolve_workers(cfg)
    return {
        "solov2": __version__,
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in _PACKAGES},
        "device": {"requested": device, "kind": kind, "backend": BACKENDS[kind]},
        "npu": _npu(npu_ok, npu_why),
        "cuda": _cuda(),
        "backends": {name: _backend_available(name) for name in sorted(set(BACKENDS.values()))},
        "fused_optimizers": {name: has_fused_kernel(name, kind) for name in ("sgd", "adamw")},  # else foreach
        "cpus": {
            "node": os.cpu_count(),
            "this_process": available_cpus(),
            "local_processes": local_processes,
            "loader_workers": workers,
        },
        "shm": {
            "path": str(SHM),
            "bytes": shm_size(),
            "warning": shm_warning(cfg, workers=workers, local_processes=local_processes),
        },
        "dist_timeout_s": dist_timeout_s(),
        "environment": {name: os.environ[name] for name in _ENV if name in os.environ},
    }


def _npu_line(npu: dict[str, Any]) -> str:
    if not npu["usable"]:
        return f"not used: {npu['why']}"
    names = ", ".join(npu["devices"]) or "usable"
    bf16 = "unknown" if npu["bf16"] is None else npu["bf16"]
    return f"{names} (bf16 {bf16}, fp16 overflow {npu['fp16_overflow'] or 'unknown'})"


def _size(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 2**30:.1f} GiB"


def format_report(report: dict[str, Any]) -> str:
    """The report as aligned ``name  value`` lines, a warning last."""
    d, cpus, shm, cuda, npu = report["device"], report["cpus"], report["shm"], report["cuda"], report["npu"]
    packages = ", ".join(f"{name} {version}" for name, version in report["packages"].items() if version)
    gpus = ", ".join(cuda.get("devices", ()))
    optimizers = ", ".join(
        f"{name} {'fused' if ok else 'foreach'}" for name, ok in report["fused_optimizers"].items()
    )
    lines = [
        ("solov2", f"{report['solov2']} (Python {report['python']})"),
        ("packages", packages),
        ("device", f"--device {d['requested']} -> {d['kind']} ({d['backend']} between processes)"),
        ("npu", _npu_line(npu)),
        (
            "cuda",
            f"{gpus} (CUDA {cuda['cuda']}, bf16 {cuda['bf16']})" if cuda["available"] else "not available",
        ),
        (
            "backends",
            ", ".join(f"{name} {'built in' if ok else 'no'}" for name, ok in report["backends"].items()),
        ),
        ("optimizers", f"{optimizers} on {d['kind']}"),
        ("cpus", f"{cpus['this_process']} for this process, {cpus['node']} on the node"),
        (
            "loaders",
            f"{cpus['loader_workers']} worker(s) per process, {cpus['local_processes']} process(es) here",
        ),
        ("shm", f"{shm['path']} {_size(shm['bytes'])}"),
        ("dist timeout", f"{report['dist_timeout_s']} s ({DIST_TIMEOUT_ENV})"),
        *report["environment"].items(),
    ]
    width = max(len(name) for name, _ in lines)
    text = [f"{name:<{width}}  {value}" for name, value in lines]
    if shm["warning"]:
        text.append(f"warning: {shm['warning']}")
    return "\n".join(text)
