"""Static-shape SOLOv2 instance segmentation for Ascend NPUs, NVIDIA GPUs and CPUs."""

import os as _os

# torch >= 2.5 imports installed device plugins (torch_npu) on `import torch`; without Ascend's CANN
# toolkit that import fails and takes torch down with it. solov2.device imports torch_npu itself,
# safely, when an NPU is wanted. Set before anything here imports torch.
_os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

__version__ = "0.1.0"
