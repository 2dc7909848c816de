"""The whole static SOLOv2 model, pre- and post-processing included, as one ONNX graph.

:func:`export_onnx` writes the graph (uint8 images in, fixed-size detections out, metadata a consumer
needs) after checking it in onnxruntime against PyTorch; :class:`OnnxRunner` runs such a file as a
runner of the shared inference path (``solov2 predict --onnx``, ``solov2 eval --onnx``).

Needs the ``export`` extra (onnx, onnxruntime, onnxscript); they are imported only when used, so the
trainer runs without them.
"""

from .graph import INPUT_NAME, OUTPUT_NAMES, DetectionGraph, export_onnx
from .runner import OnnxRunner

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "DetectionGraph", "OnnxRunner", "export_onnx"]
