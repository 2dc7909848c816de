"""Static-shape SOLOv2 instance segmentation for Ascend NPUs, NVIDIA GPUs and CPUs."""

__version__ = "0.1.0"
