"""The argument parser of ``solov2`` (run by :mod:`solov2.cli`).

Each sub-command's arguments are added by a function of its own (``_add_train``, ``_add_eval``, ...); flags
shared by several sub-commands (``--config``/``--opts``, ``--data-path``, ``--device``,
``--checkpoint``/``--onnx``) by one helper each.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .config import CONFIG_DIR

DATA_LAYOUT = "COCO layout: annotations/instances_{train,val}2017.json, train2017/, val2017/"


DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")
"""Where Kubernetes reads a container's termination message (it creates the file in every container).
``solov2 train`` writes there by default only where the file exists; a path given explicitly must work."""


def _optional_path(text: str) -> Path | None:
    return Path(text) if text else None


def termination_log(value: Path | None) -> Path | None:
    """``--termination-log`` as given, or, left at its default, Kubernetes' file where it exists."""
    if value is DEFAULT_TERMINATION_LOG and not value.exists():
        return None
    return value


class FlagError(Exception):
    """A command line argparse refuses; ``parser`` is the (sub-)parser that refused it."""

    def __init__(self, message: str, parser: argparse.ArgumentParser) -> None:
        super().__init__(message)
        self.parser = parser

    def exit(self) -> None:
        """What argparse does with it: the usage and the error on stderr, exit status 2."""
        self.parser.print_usage(sys.stderr)
        self.parser.exit(2, f"{self.parser.prog}: error: {self}\n")


class _Parser(argparse.ArgumentParser):
    """Raises :class:`FlagError` where argparse would exit, so that ``solov2 train`` can first write
    its termination message (a bad flag is no reason for Kubernetes to retry)."""

    subcommands: dict[str, argparse.ArgumentParser]

    def error(self, message: str) -> NoReturn:
        raise FlagError(message, self)

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        """As argparse's, but a flag the sub-command does not know is reported with that sub-command's
        usage (argparse reports it with the top-level one); one given before the sub-command is the
        top level's."""
        argv = _images_out_of_opts(list(sys.argv[1:] if args is None else args))
        parsed, extra = self.parse_known_args(argv, namespace)
        if extra:
            command = getattr(parsed, "command", None)
            owner = getattr(self, "subcommands", {}).get(command, self)
            if command in argv and extra[0] in argv[: argv.index(command)]:
                owner = self
            hint = _opts_hint(extra) if "--opts" in owner._option_string_actions else ""
            owner.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
        return parsed


def _images_out_of_opts(argv: list[str]) -> list[str]:
    """``predict ... a.jpg --opts x=1 b.jpg`` -> ``predict ... a.jpg b.jpg --opts x=1``: an override
    always has an ``=``, so what follows ``--opts`` without one is predict's images, which argparse
    would give to ``--opts`` (and then miss). They go just before that ``--opts``, in their order."""
    if argv[:1] != ["predict"] or "--opts" not in argv:
        return argv
    out: list[str] = []
    opts_at: int | None = None  # where the --opts being read sits in ``out``
    for arg in argv:
        if arg.startswith("-"):
            opts_at = len(out) if arg == "--opts" else None
        elif opts_at is not None and "=" not in arg:
            out.insert(opts_at, arg)
            opts_at += 1
            continue
        out.append(arg)
    return out


def _opts_hint(extra: Sequence[str]) -> str:
    """``" (config fields go in --opts: --opts train.epochs=1)"`` when an unknown flag is named like a
    config field (``--epochs 1``, ``--base-lr=0.02``); else ``""``."""
    from .config import load_config, to_dict

    fields: dict[str, str] = {}

    def walk(tree: dict[str, Any], prefix: str) -> None:
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                fields.setdefault(key, prefix + key)

    walk(to_dict(load_config(None)), "")
    for i, arg in enumerate(extra):
        name, _, value = arg.removeprefix("--").partition("=")
        if arg.startswith("--") and name.replace("-", "_") in fields:
            if not value:
                value = extra[i + 1] if i + 1 < len(extra) and not extra[i + 1].startswith("-") else "VALUE"
            return f" (config fields go in --opts: --opts {fields[name.replace('-', '_')]}={value})"
    return ""


# ---------------------------------------------------------------------------------------------
# Flags shared by several sub-commands


def _add_config_args(parser: argparse.ArgumentParser, default: str | None) -> None:
    shipped = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    where = f"Default: {default}" if default else "Default: the config stored in --checkpoint"
    parser.add_argument(
        "--config", default=default, help=f"YAML config: a file or a shipped name ({shipped}). {where}"
    )
    parser.add_argument(
        "--opts",
        nargs="*",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config fields, e.g. --opts model.head.num_grids=[12,10,8,6,4] train.base_lr=0.02 "
        "(values are parsed as YAML; --opts may be given more than once, a later value of a key wins)",
    )


def _add_data_path_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-path", type=Path, required=True, help=f"data set root ({DATA_LAYOUT})")


def _add_device_arg(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    parser.add_argument(
        "--device",
        default=default,
        help="auto (npu, then cuda, then cpu), cpu, cuda, npu, or one device like cuda:1. Under torchrun each "
        "process takes the device of its LOCAL_RANK (an index is refused with several processes per node). "
        "Default: %(default)s",
    )


def _add_checkpoint_arg(parser: argparse.ArgumentParser, *, onnx: bool = False) -> None:
    group = parser.add_mutually_exclusive_group(required=True) if onnx else parser
    group.add_argument(
        "--checkpoint",
        type=Path,
        required=not onnx,  # with --onnx, the group requires one of the two
        help="a training checkpoint, a model state dict, or a checkpoints directory (its newest)",
    )
    if onnx:
        group.add_argument(
            "--onnx",
            type=Path,
            help="instead of --checkpoint: a model written by 'solov2 export', run in onnxruntime on the CPU "
            "(images are prepared for its canvas; its config and class names come from the file)",
        )


# ---------------------------------------------------------------------------------------------
# train


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train on a COCO-layout data set, then evaluate",
        description=f"Train SOLOv2 ({DATA_LAYOUT}). Checkpoints go to WORK_DIR/checkpoints; at the "
        "end the val split is evaluated and rank 0 writes WORK_DIR/results.json and the "
        "termination message.",
    )
    _add_config_args(p, "solov2_r50_fpn_1x_coco")
    _add_data_path_arg(p)
    p.add_argument("--work-dir", type=Path, required=True, help="where checkpoints, logs and results go")
    _add_device_arg(p)
    _add_train_start_args(p)
    _add_train_compile_args(p)
    _add_train_end_args(p)
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics from rank 0 on this port, 0..65535 (0 = any free port). Default: off",
    )
    p.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="skip and count unreadable image files instead of stopping with an error",
    )


def _add_train_start_args(p: argparse.ArgumentParser) -> None:
    """Where the model's weights come from: ``--resume``, ``--load-from``."""
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from WORK_DIR/checkpoints/last_checkpoint (model, optimizer, schedule, RNG, data "
        "position); starts fresh when there is none",
    )
    p.add_argument(
        "--load-from",
        type=Path,
        default=None,
        help="initialise the model from these weights only (fine-tuning); layers whose shape changed, "
        "like a new class count's category branch, stay initialised",
    )


def _add_train_compile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the static training step: forward, targets and losses as one graph with its "
        "backward (AOTAutograd), and the optimiser update unless the optimiser is already fused",
    )
    p.add_argument(
        "--compile-mode",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        default="default",
        help="torch.compile mode with --compile; on CUDA reduce-overhead replays the step's graphs as CUDA "
        "graphs (on NPUs torch_npu maps it to NPU graphs, and inductor needs Triton-Ascend; not yet run there)",
    )


def _add_termination_log_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--termination-log",
        type=_optional_path,
        default=DEFAULT_TERMINATION_LOG,
        help="file that receives the final metrics as compact JSON (< 4 KiB), for Kubernetes, or on "
        "failure the error and whether a retry can help (of several processes, the first to fail writes "
        "it); checked before training starts; '' disables. Default: %(default)s if it exists (Kubernetes "
        "makes it in every container), else none",
    )


def termination_log_of(argv: list[str]) -> Path | None:
    """The termination log a ``solov2 train`` command line names (as :func:`termination_log` resolves
    it), read with that flag's own definition alone, so that a refused other flag does not hide it."""
    p = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    _add_termination_log_arg(p)
    try:
        known, _ = p.parse_known_args(argv)
    except argparse.ArgumentError:  # the flag itself is broken (no value)
        return termination_log(DEFAULT_TERMINATION_LOG)
    return termination_log(known.termination_log)


def _add_train_end_args(p: argparse.ArgumentParser) -> None:
    """How the run ends: ``--no-eval``, ``--termination-log``, ``--stop-timeout``."""
    p.add_argument("--no-eval", action="store_true", help="skip the COCO evaluation after training")
    _add_termination_log_arg(p)
    p.add_argument(
        "--stop-timeout",
        type=float,
        default=25.0,
        metavar="SECONDS",
        help="on SIGTERM (or Ctrl-C), training stops at the next step boundary, writes a checkpoint and the "
        "termination message, and exits with 143 (130 for Ctrl-C); if that takes longer than this, the process "
        "exits so without the checkpoint. Default: %(default)s",
    )


# ---------------------------------------------------------------------------------------------
# eval, predict


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="COCO mask and box AP of a checkpoint on the val split",
        description=f"Evaluate a checkpoint or an exported ONNX model ({DATA_LAYOUT}); writes "
        "detections_segm.json and metrics.json to --work-dir. Run under torchrun to split the images across "
        "processes.",
    )
    _add_config_args(p, None)
    _add_data_path_arg(p)
    _add_checkpoint_arg(p, onnx=True)
    p.add_argument("--work-dir", type=Path, default=None, help="where to write results (default: print only)")
    p.add_argument("--split", default="val2017", help="split to evaluate (default: %(default)s)")
    _add_device_arg(p)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="segment images and write overlay PNGs and a JSON of results",
        description="Run a checkpoint (or an exported ONNX model) on images; writes OUT/<image>.png overlays "
        "(coloured masks, class and score) and OUT/predictions.json.",
    )
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    _add_config_args(p, None)
    _add_checkpoint_arg(p, onnx=True)
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument(
        "--score-thr",
        type=float,
        default=0.3,
        help="draw and report detections above this score (default: %(default)s)",
    )
    _add_device_arg(p)


# ---------------------------------------------------------------------------------------------
# make-synthetic, smoke, check-static


def _add_make_synthetic(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-synthetic",
        help="write a COCO-format data set of simple shapes",
        description="Write a small COCO-layout data set of rectangles, ellipses and triangles that "
        "a tiny model learns on a CPU in minutes. Nothing is downloaded.",
    )
    p.add_argument(
        "out",
        type=Path,
        metavar="OUT",
        help="output directory (created; refused if it already holds a data set)",
    )
    p.add_argument("--train", type=int, default=200, help="training images (default: %(default)s)")
    p.add_argument("--val", type=int, default=50, help="validation images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")


def _add_smoke(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "smoke",
        help="a few training steps on generated images, printing losses",
        description="Build the model from a config, train a few steps on one generated batch "
        "(the loss should fall), then run static inference once.",
    )
    _add_config_args(p, "solov2_tiny_cpu")
    p.add_argument("--steps", type=int, default=5, help="training steps (default: %(default)s)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="images per step (default: data.samples_per_device)"
    )
    _add_device_arg(p, "cpu")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: train.base_lr)")


def _add_check_static(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-static",
        help="prove the training step and post-processing compile to one static graph",
        description="Compile forward + targets + losses + backward, and inference + Matrix NMS, with "
        "torch.compile(fullgraph=True, dynamic=False) on batches with different instance counts (zero included). "
        "Prints one JSON line; exits 1 unless each path has one graph, no graph break, no recompilation and no "
        "data-dependent operator.",
    )
    _add_config_args(p, "solov2_tiny_cpu")
    p.add_argument("--batch-size", type=int, default=2, help="images per batch (default: %(default)s)")
    p.add_argument(
        "--instance-counts",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="ground-truth instances per image, one batch each (default: 0, 3 and max_instances)",
    )
    _add_device_arg(p, "cpu")


def _add_env(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "env",
        help="what this machine or pod gives the trainer: devices, backends, CPUs, /dev/shm",
        description="Report the versions, the device --device picks (and why an NPU is not used), the "
        "process-group backends, the fused optimiser kernels of that device, the CPUs this process may use and "
        "the loader workers they afford, /dev/shm against what the config's loaders keep there, and the "
        "distributed environment. Exits 2 if an explicitly requested device is not usable.",
    )
    _add_config_args(p, "solov2_r50_fpn_1x_coco")
    _add_device_arg(p)
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")


# ---------------------------------------------------------------------------------------------
# export, params


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write the whole model, post-processing included, as ONNX, checked in onnxruntime",
        description="Export a checkpoint as one ONNX graph from uint8 images [N, 3, H, W] (normalised inside) to "
        "fixed-size detections: scores [N, K], labels [N, K], soft masks [N, K, H/4, W/4] and valid [N, K] "
        "(K = model.inference.max_per_img), with class names, canvas, mask stride and thresholds in the model's "
        "metadata. Before writing, generated images run through onnxruntime and PyTorch and the comparison is "
        "printed; the file is not written if they differ beyond --atol. Needs the export extra "
        "(pip install 'solov2-operator[export]').",
    )
    _add_config_args(p, None)
    _add_checkpoint_arg(p)
    p.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    _add_export_graph_args(p)
    _add_export_check_args(p)


def _add_export_graph_args(p: argparse.ArgumentParser) -> None:
    """What is fixed in the graph: ``--canvas``, ``--batch``, ``--opset``."""
    p.add_argument(
        "--canvas",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="input canvas; sides must be multiples of the largest stride. Default: the config's first canvas",
    )
    p.add_argument(
        "--batch", type=int, default=1, help="images per run, fixed in the graph (default: %(default)s)"
    )
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, 18 or newer (default: %(default)s)")


def _add_export_check_args(p: argparse.ArgumentParser) -> None:
    """How the graph is checked against PyTorch before it is written: ``--atol``, ``--check-batches``."""
    p.add_argument(
        "--atol",
        type=float,
        default=1e-3,
        help="largest score or soft-mask difference allowed between onnxruntime and PyTorch; validity and labels "
        "must be equal (default: %(default)s)",
    )
    p.add_argument(
        "--check-batches",
        type=int,
        default=2,
        help="batches of generated images compared before writing (default: %(default)s)",
    )


def _add_params(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "params",
        help="print the model's parameter counts as JSON",
        description="Build the model and print parameters per part (backbone, FPN, head).",
    )
    _add_config_args(p, "solov2_r50_fpn_1x_coco")


# ---------------------------------------------------------------------------------------------

_SUBCOMMANDS = (
    _add_train, _add_eval, _add_predict, _add_make_synthetic, _add_smoke, _add_check_static, _add_export,
    _add_params, _add_env,
)  # fmt: skip
"""Adds each sub-command's parser, in the order ``solov2 --help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="solov2",
        description="Static-shape SOLOv2 instance segmentation: train, evaluate, predict and audit on CPU, CUDA or "
        "Ascend NPU. Run under torchrun for several processes.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for add in _SUBCOMMANDS:
        add(sub)
    parser.subcommands = sub.choices
    return parser
