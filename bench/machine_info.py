"""The machine a benchmark ran on, as every script under ``bench/`` prints it with its figures."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch


def machine_info(device: str | torch.device | None = None, **extra: Any) -> dict[str, Any]:
    """Processor, CPUs (and those this process may use), torch's intra-op threads, the device (an
    accelerator's name, else its type), Python and torch versions, and the load average when called
    (the scripts call it at the end of their run: other jobs on the machine show there); ``extra`` added.
    """
    kind = str(device or "cpu").split(":")[0]
    return {
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if kind == "cuda" else kind,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],
        **extra,
    }
