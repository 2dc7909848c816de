"""Every operator of the R50 training step, of inference and of evaluation's per-image post-processing
has an NPU kernel in torch_npu.

An operator torch_npu does not implement still runs on an NPU, through its CPU fallback: a copy to the
host and back, and a host synchronisation, on every call. The operators are recorded here on the CPU
(below autograd, where composite operators are already decomposed) and looked up in the list of
kernels the torch_npu 2.14.0 wheel ships (``npu_kernels.txt``, written by ``tools/npu_kernels.py``);
an operator with a composite kernel in torch runs on any device through the operators it calls.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from solov2.config import load_config
from solov2.data.synthetic import synthetic_batch
from solov2.engine.inference import ImageMeta, to_instances
from solov2.model import build_model
from solov2.postprocess import encode_rle_by_runs, masks_to_boxes_xywh
from solov2.smoke import _train_step
from solov2.structures import Detections
from solov2.targets import compact_ground_truth

KERNELS = Path(__file__).with_name("npu_kernels.txt")
COMPOSITE = (
    "CompositeExplicitAutograd",
    "CompositeExplicitAutogradNonFunctional",
    "CompositeImplicitAutograd",
)


class _Operators(TorchDispatchMode):
    """The names of the operators dispatched inside the mode (``aten::add.Tensor``)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.name())
        return func(*args, **(kwargs or {}))


def _npu_kernels() -> set[str]:
    lines = KERNELS.read_text().splitlines()
    return {line for line in lines if line and not line.startswith("#")}


def _falls_back(name: str, kernels: set[str]) -> bool:
    """Whether operator ``name`` would run through torch_npu's CPU fallback."""
    namespace, _, op = name.partition("::")
    if namespace != "aten":
        return False  # profiler marks and the like: no device work
    if op in kernels or op.removesuffix(".default") in kernels:
        return False
    return not any(torch._C._dispatch_has_kernel_for_dispatch_key(name, key) for key in COMPOSITE)


@pytest.fixture(scope="module")
def r50_operators() -> dict[str, set[str]]:
    cfg = load_config("solov2_r50_fpn_1x_coco", ["data.canvases=[[256,256]]"])
    images, gt = synthetic_batch(2, (256, 256), max_instances=cfg.model.targets.max_instances, seed=0)
    gt = compact_ground_truth(gt)  # what the loaders hand over
    torch.manual_seed(0)
    model = build_model(cfg)
    step = _train_step(model, cfg, "cpu", cfg.train.base_lr)  # the loop's step: fused SGD, clipping
    model.train()
    step(images, gt, 1)  # optimiser state exists from here on, as in every later step
    training, inference = _Operators(), _Operators()
    with training:
        step(images, gt, 2)
    model.eval()
    with torch.no_grad(), inference:
        model(images)  # forward, Matrix NMS and the fixed-size detections
    # Evaluation's per-image part on the device: paste back, box and find the RLE run boundaries.
    det = Detections(
        scores=torch.rand(1, 6),
        labels=torch.arange(6)[None],
        masks=torch.rand(1, 6, 64, 64),
        valid=torch.ones(1, 6, dtype=torch.bool),
    )
    evaluation = _Operators()
    with evaluation:
        found = to_instances(det, 0, ImageMeta((250, 256), (240, 246)), canvas_size=(256, 256), mask_thr=0.5)
        masks_to_boxes_xywh(found.masks)
        encode_rle_by_runs(found.masks)
    assert found.masks.shape[0] == 6
    return {"training": training.names, "inference": inference.names, "evaluation": evaluation.names}


@pytest.mark.parametrize("part", ["training", "inference", "evaluation"])
def test_every_operator_has_an_npu_kernel(r50_operators, part):
    kernels = _npu_kernels()
    assert "_fused_sgd_" in kernels and "convolution_backward" in kernels  # the list is the real one
    names = r50_operators[part]
    assert len(names) > {"training": 40, "inference": 40, "evaluation": 15}[part]  # the recording saw it
    falling_back = sorted(n for n in names if _falls_back(n, kernels))
    assert falling_back == [], f"{part}: no NPU kernel in torch_npu 2.14.0 for {falling_back}"


def test_an_operator_without_an_npu_kernel_is_found():
    """``torch.mode`` has no NPU kernel and no composite one: the check names it."""
    recorded = _Operators()
    with recorded:
        torch.mode(torch.tensor([1.0, 2.0, 2.0]))
    assert [n for n in recorded.names if _falls_back(n, _npu_kernels())] == ["aten::mode"]
