"""Devices (cpu, cuda, npu) and distributed set-up from torchrun's environment (mixed precision: :mod:`.amp`).

Ascend NPUs come through ``torch_npu``, which cannot even be imported without Ascend's CANN toolkit.
torch >= 2.5 would auto-load it on ``import torch`` (and fail there), so the ``solov2`` package sets
``TORCH_DEVICE_BACKEND_AUTOLOAD=0`` before torch is imported and this module imports ``torch_npu``
itself, only when an NPU is asked for or auto-detected, catching every failure.

torchrun gives every process ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (plus ``MASTER_ADDR`` and
``MASTER_PORT``); they are used as they are, never derived (on Ascend clusters a pod-level ``RANK``
from a scheduler would be wrong for multi-process pods).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import ConfigError

BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}
DIST_TIMEOUT_ENV = "SOLOV2_DIST_TIMEOUT_SECONDS"
DEFAULT_DIST_TIMEOUT_S = 1800
HCCL_EXEC_TIMEOUT_MAX = 17340
"""HCCL's largest ``HCCL_EXEC_TIMEOUT`` on first-generation Ascend 910 cards (later ones take more)."""


def npu_status() -> tuple[bool, str]:
    """Whether an Ascend NPU is usable, and why not: never raises, even without CANN."""
    if importlib.util.find_spec("torch_npu") is None:
        return False, "torch_npu is not installed"
    try:
        importlib.import_module("torch_npu")
    except Exception as exc:  # missing CANN libraries raise ImportError, OSError or RuntimeError
        return (
            False,
            f"torch_npu failed to import ({type(exc).__name__}: {exc}); is the CANN toolkit sourced?",
        )
    npu = getattr(torch, "npu", None)
    try:
        if npu is None or not npu.is_available() or npu.device_count() < 1:
            return False, "torch_npu imported but no NPU is visible (check ASCEND_RT_VISIBLE_DEVICES)"
    except Exception as exc:
        return False, f"torch.npu query failed: {exc}"
    return True, f"{npu.device_count()} NPU(s)"


def detect_device_kind(requested: str = "auto") -> str:
    """``auto`` picks npu, then cuda, then cpu. An explicit kind that is unavailable is an error."""
    kind = requested.split(":")[0]
    if kind not in ("auto", *BACKENDS):
        raise ConfigError(f"--device: expected auto, cpu, cuda or npu (optionally :N), got {requested!r}")
    if kind in ("auto", "npu"):
        ok, why = npu_status()
        if ok:
            return "npu"
        if kind == "npu":
            raise ConfigError(f"--device npu: no usable NPU: {why}")
    if kind in ("auto", "cuda"):
        if torch.cuda.is_available():
            return "cuda"
        if kind == "cuda":
            raise ConfigError("--device cuda: torch sees no CUDA device")
    return "cpu"


@dataclass(frozen=True)
class Runtime:
    """Where this process computes and who its peers are."""

    device: torch.device
    kind: str
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    timeout_s: int = DEFAULT_DIST_TIMEOUT_S
    """How long a collective of the process group (and of groups made beside it) may wait."""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> str:
        return BACKENDS[self.kind]


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ConfigError(f"environment variable {name}: expected an integer, got {value!r}") from exc


def auto_device_warning(requested: str, kind: str) -> str | None:
    """Why ``--device auto`` left an installed torch_npu unused (CANN not sourced, no NPU visible), so
    that a run meant for NPUs does not train on the CPU unnoticed; None when there is nothing to say."""
    if requested != "auto" or kind == "npu" or importlib.util.find_spec("torch_npu") is None:
        return None
    ok, why = npu_status()
    return (
        None if ok else f"--device auto: torch_npu is installed but no NPU is used ({why}); running on {kind}"
    )


def _device_index(requested: str, default: int) -> int:
    if ":" not in requested:
        return default
    try:
        return int(requested.split(":", 1)[1])
    except ValueError:
        raise ConfigError(f"--device {requested!r}: the index after ':' must be an integer") from None


def _bind(kind: str, index: int) -> torch.device:
    """Make device ``index`` of ``kind`` this process's current one."""
    if kind == "cuda":
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if kind == "npu":
        torch.npu.set_device(index)  # type: ignore[attr-defined]
        return torch.device("npu", index)
    return torch.device("cpu")


def select_device(requested: str = "auto") -> torch.device:
    """The device ``--device`` names (``auto``, a kind, or a kind with an index; a kind alone is its
    device 0), made this process's current one: for the single-process commands."""
    return _bind(detect_device_kind(requested), _device_index(requested, 0))


def dist_timeout_s() -> int:
    """How long a collective may wait for the other processes: ``SOLOV2_DIST_TIMEOUT_SECONDS``, else 30
    minutes. Its own setting, not HCCL's ``HCCL_CONNECT_TIMEOUT``: that one bounds HCCL's link set-up
    (600 s in the operator's pods), while ranks wait in a collective for as long as rank 0 saves a
    checkpoint or the other ranks infer their share of the evaluation. On NPUs HCCL bounds the wait on
    the device itself with ``HCCL_EXEC_TIMEOUT`` (1836 s when unset): :func:`setup_runtime` sets it to
    this value unless the environment sets it."""
    timeout = _env_int(DIST_TIMEOUT_ENV, DEFAULT_DIST_TIMEOUT_S)
    if timeout < 60:
        raise ConfigError(f"environment variable {DIST_TIMEOUT_ENV}={timeout}: must be at least 60 seconds")
    return timeout


def setup_runtime(requested: str = "auto", *, timeout_s: int | None = None) -> Runtime:
    """Pick the device, bind this process to ``LOCAL_RANK``'s device and join the process group.

    The group's backend is hccl on NPU, nccl on CUDA and gloo on CPU; its collectives time out after
    ``timeout_s`` seconds (default: :func:`dist_timeout_s`).
    """
    rank, local_rank, world_size = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0), _env_int("WORLD_SIZE", 1)
    if not 0 <= rank < world_size:
        raise ConfigError(f"environment: RANK={rank} must lie in [0, WORLD_SIZE={world_size})")
    kind = detect_device_kind(requested)
    if ":" in requested and _env_int("LOCAL_WORLD_SIZE", 1) > 1:
        raise ConfigError(
            f"--device {requested!r}: with several processes per node each takes its LOCAL_RANK's device; "
            f"give --device {kind} without an index (CUDA_VISIBLE_DEVICES / ASCEND_RT_VISIBLE_DEVICES pick "
            "which devices the node's processes use)"
        )
    device = _bind(kind, _device_index(requested, local_rank))
    timeout = timeout_s or (dist_timeout_s() if world_size > 1 else DEFAULT_DIST_TIMEOUT_S)
    if world_size > 1 and not dist.is_initialized():
        if kind == "npu":  # read when the HCCL process group is made; 17340 s is HCCL's most on a 910
            os.environ.setdefault("HCCL_EXEC_TIMEOUT", str(min(timeout, HCCL_EXEC_TIMEOUT_MAX)))
        dist.init_process_group(
            backend=BACKENDS[kind], rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout)
        )
        _JOINED[0] = True
    return Runtime(
        device=device, kind=kind, rank=rank, local_rank=local_rank, world_size=world_size, timeout_s=timeout
    )


_JOINED = [False]
"""Whether this process joined a process group (a one-element list, set by :func:`setup_runtime`)."""


def exit_process(code: int) -> None:
    """Exit with ``code``. A process that joined a process group exits without the interpreter's
    finalisation: there gloo's threads can abort it (SIGABRT, "terminate called without an active
    exception") even after ``destroy_process_group``, which turns a run that finished into a failed
    worker (2 gloo processes under torchrun, measured: 13 aborts in 85 runs that finalise, none in 20
    that do not)."""
    if not _JOINED[0]:
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def shutdown(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()
