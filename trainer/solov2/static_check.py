"""``solov2 check-static``: prove that a training step and the post-processing have static shapes.

The training step (forward + targets + losses, and through AOTAutograd its backward) and the
inference path (forward + Matrix NMS) are compiled with ``torch.compile(fullgraph=True,
dynamic=False)`` and run on several batches whose numbers of ground-truth instances differ (zero
included). A static step gives exactly one graph per path, no graph break, no recompilation, and
no data-dependent operator in the captured ATen graphs. Counting graphs alone is not enough: torch
can capture boolean indexing inside one graph through an "unbacked" symbolic size, so every node of
the forward and backward graphs is inspected too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from .config import Config
from .data.synthetic import synthetic_batch
from .model import build_model, total_loss
from .model.solov2 import SOLOv2
from .structures import CompactGroundTruth, GroundTruth
from .targets import compact_ground_truth

# ATen operators whose output size or control flow depends on tensor values, or that sync with the host.
DATA_DEPENDENT_OPS = (
    "nonzero",
    "masked_select",
    "_local_scalar_dense",
    "unique",
    "_unique",
    "_unique2",
    "unique_consecutive",
    "unique_dim",
    "repeat_interleave",
    "bincount",
    "histc",
    "_assert_async",
    "_assert_scalar",
    "item",
    "sym_constrain_range",
    "sym_constrain_range_for_size",
)
INDEXING_OPS = ("index", "index_put", "index_put_", "_index_put_impl", "_unsafe_index", "_unsafe_index_put")


@dataclass
class PathReport:
    """What compiling one path (train or inference) produced."""

    batches: int = 0
    graphs: int = 0
    graph_breaks: int = 0
    recompiles: int = 0
    data_dependent_ops: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.graphs == 1
            and self.graph_breaks == 0
            and self.recompiles == 0
            and not self.data_dependent_ops
            and not self.errors
        )


def _node_problems(gm: torch.fx.GraphModule) -> list[str]:
    """Names of data-dependent operators and unbacked (value-dependent) sizes in an ATen graph."""
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

    found = []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        base = name.split(".")[0]
        if base in DATA_DEPENDENT_OPS:
            found.append(base)
        elif base in INDEXING_OPS and any(
            isinstance(a, torch.fx.Node)
            and getattr(a.meta.get("val"), "dtype", None) in (torch.bool, torch.uint8)
            for a in (node.args[1] if len(node.args) > 1 and isinstance(node.args[1], list | tuple) else ())
        ):
            found.append("index (boolean mask)")
        else:
            val = node.meta.get("val")
            with contextlib.suppress(Exception):
                if val is not None and free_unbacked_symbols(val):
                    found.append(f"{base} (value-dependent size)")
    return found


class _InspectingBackend:
    """A torch.compile backend that runs graphs eagerly and records what Dynamo and AOTAutograd captured."""

    def __init__(self, report: PathReport) -> None:
        self.report = report

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Callable:
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd

        self.report.graphs += 1

        def inspect(graph: torch.fx.GraphModule, _inputs: Sequence[Any]) -> Callable:
            for problem in _node_problems(graph):
                if problem not in self.report.data_dependent_ops:
                    self.report.data_dependent_ops.append(problem)
            return make_boxed_func(graph.forward)

        return aot_autograd(fw_compiler=inspect, bw_compiler=inspect)(gm, example_inputs)


def _run_path(
    fn: Callable[..., Any], batches: Sequence[tuple[Tensor, GroundTruth | CompactGroundTruth]], backward: bool
) -> PathReport:
    report = PathReport(batches=len(batches))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(fn, backend=_InspectingBackend(report), fullgraph=True, dynamic=False)
    for images, gt in batches:
        try:
            out = compiled(images, gt)
            if backward:
                out.backward()
        except Exception as exc:  # a graph break under fullgraph=True raises; report it, don't crash
            report.graph_breaks += 1
            report.errors.append(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}")
            break
    counters = torch._dynamo.utils.counters
    report.graph_breaks += sum(counters["graph_break"].values())
    report.recompiles = max(report.graphs - 1, 0)
    return report


def check_static(
    cfg: Config,
    *,
    batch_size: int = 2,
    instance_counts: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Compile the training step and the inference path; return a JSON-able report with ``ok``.

    ``instance_counts`` are the numbers of ground-truth instances per batch (one batch each); the
    default is zero, a few, and ``max_instances``.
    """
    n = cfg.model.targets.max_instances
    counts = list(instance_counts) if instance_counts is not None else [0, min(3, n), n]
    canvas = cfg.data.canvases[0]
    batches = []
    for i, count in enumerate(counts):
        images, gt = synthetic_batch(
            batch_size, canvas, max_instances=n, instance_counts=[count] * batch_size, seed=seed + i
        )
        gt.validate(cfg.model.head.num_classes, canvas)
        batches.append((images.to(device), compact_ground_truth(gt).to(device)))  # as the loaders give it

    torch.manual_seed(seed)
    model: SOLOv2 = build_model(cfg).to(device)

    def train_step(images: Tensor, gt: CompactGroundTruth) -> Tensor:
        return total_loss(model(images, gt))

    def infer(images: Tensor, gt: CompactGroundTruth) -> Tensor:
        det = model(images)
        return det.scores.sum() + det.masks.sum()

    model.train()
    train = _run_path(train_step, batches, backward=True)
    model.eval()
    with torch.no_grad():
        inference = _run_path(infer, batches, backward=False)
    torch._dynamo.reset()
    return {
        "ok": train.ok and inference.ok,
        "instance_counts": counts,
        "canvas": list(canvas),
        "batch_size": batch_size,
        "train": {**asdict(train), "ok": train.ok},
        "inference": {**asdict(inference), "ok": inference.ok},
    }
