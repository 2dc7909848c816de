"""SOLOv2 model: torchvision ResNet + FPN backbone, SOLOv2 head and mask-feature branch."""

from .solov2 import SOLOv2, build_model, parameter_counts, total_loss

__all__ = ["SOLOv2", "build_model", "parameter_counts", "total_loss"]
