"""``solov2``: the trainer's command line.

Every model sub-command takes ``--config`` (a YAML path or the name of a shipped config) and
``--opts`` (``key=value`` overrides, values parsed as YAML). Bad input (a config field, a file, a data
set) is reported in one line naming the field or file, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import CONFIG_DIR, Config, config_from_dict, load_config
from .engine.failures import Terminated
from .errors import ConfigError, UserError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_TERMINATED = Terminated.exit_code  # 128 + SIGTERM
DATA_LAYOUT = "COCO layout: annotations/instances_{train,val}2017.json, train2017/, val2017/"


def _add_config_args(parser: argparse.ArgumentParser, default: str | None) -> None:
    shipped = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    where = f"Default: {default}" if default else "Default: the config stored in --checkpoint"
    parser.add_argument(
        "--config", default=default, help=f"YAML config: a file or a shipped name ({shipped}). {where}"
    )
    parser.add_argument(
        "--opts",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override config fields, e.g. --opts model.head.num_grids=[12,10,8,6,4] train.base_lr=0.02 "
        "(values are parsed as YAML)",
    )


def _optional_path(text: str) -> Path | None:
    return Path(text) if text else None


def _add_device_arg(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    parser.add_argument(
        "--device",
        default=default,
        help="auto (npu, then cuda, then cpu), cpu, cuda, npu, or one device like cuda:1. Under torchrun each "
        "process takes the device of its LOCAL_RANK. Default: %(default)s",
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="solov2",
        description="Static-shape SOLOv2 instance segmentation: train, evaluate, predict and audit on CPU, CUDA or "
        "Ascend NPU. Run under torchrun for several processes.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train on a COCO-layout data set, then evaluate",
        description=f"Train SOLOv2 ({DATA_LAYOUT}). Checkpoints go to WORK_DIR/checkpoints; at the "
        "end the val split is evaluated and rank 0 writes WORK_DIR/results.json and the "
        "termination message.",
    )
    _add_config_args(p, "solov2_r50_fpn_1x_coco")
    p.add_argument("--data-path", type=Path, required=True, help=f"data set root ({DATA_LAYOUT})")
    p.add_argument("--work-dir", type=Path, required=True, help="where checkpoints, logs and results go")
    _add_device_arg(p)
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
        help="torch.compile mode with --compile; reduce-overhead replays the step's graphs as CUDA graphs "
        "(CUDA only)",
    )
    p.add_argument("--no-eval", action="store_true", help="skip the COCO evaluation after training")
    p.add_argument(
        "--termination-log",
        type=_optional_path,
        default=Path("/dev/termination-log"),
        help="file that receives the final metrics as compact JSON (< 4 KiB), for Kubernetes, or on "
        "failure the error and whether a retry can help (of several processes, the first to fail writes "
        "it); checked before training starts; '' disables. Default: %(default)s",
    )
    p.add_argument(
        "--stop-timeout",
        type=float,
        default=25.0,
        metavar="SECONDS",
        help="on SIGTERM, training stops at the next step boundary, writes a checkpoint and the termination "
        "message, and exits with 143; if that takes longer than this, the process exits with 143 without "
        "the checkpoint. Default: %(default)s",
    )
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

    p = sub.add_parser(
        "eval",
        help="COCO mask and box AP of a checkpoint on the val split",
        description=f"Evaluate a checkpoint or an exported ONNX model ({DATA_LAYOUT}); writes "
        "detections_segm.json and metrics.json to --work-dir. Run under torchrun to split the images across "
        "processes.",
    )
    _add_config_args(p, None)
    p.add_argument("--data-path", type=Path, required=True, help=f"data set root ({DATA_LAYOUT})")
    _add_checkpoint_arg(p, onnx=True)
    p.add_argument("--work-dir", type=Path, default=None, help="where to write results (default: print only)")
    p.add_argument("--split", default="val2017", help="split to evaluate (default: %(default)s)")
    _add_device_arg(p)

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

    p = sub.add_parser(
        "params",
        help="print the model's parameter counts as JSON",
        description="Build the model and print parameters per part (backbone, FPN, head).",
    )
    _add_config_args(p, "solov2_r50_fpn_1x_coco")
    return parser


def _config(args: argparse.Namespace, checkpoint: Path | None = None) -> Config:
    if args.config is not None:
        return load_config(args.config, args.opts)
    from .engine.checkpoint import read_config

    return config_from_dict(read_config(checkpoint), args.opts)  # type: ignore[arg-type]


def _train(args: argparse.Namespace) -> int:
    from .engine.failures import report_failure
    from .engine.train import TrainOptions, train

    try:
        if not (math.isfinite(args.stop_timeout) and args.stop_timeout > 0):
            raise ConfigError(f"--stop-timeout {args.stop_timeout:g}: must be a positive number of seconds")
        cfg = _config(args)
    except UserError as exc:  # the operator reads why the run never started
        report_failure(args.termination_log, exc)
        raise
    opts = TrainOptions(
        data_path=args.data_path, work_dir=args.work_dir, device=args.device, resume=args.resume,
        load_from=args.load_from, compile=args.compile, compile_mode=args.compile_mode, evaluate=not args.no_eval,
        termination_log=args.termination_log, metrics_port=args.metrics_port,
        skip_bad_images=args.skip_bad_images, config_name=str(args.config), stop_timeout=args.stop_timeout,
    )  # fmt: skip
    train(cfg, opts)
    return EXIT_OK


def _no_config_with_onnx(args: argparse.Namespace) -> None:
    if args.config is not None:
        raise ConfigError("--config: not used with --onnx (the file holds its config; --opts still apply)")


def _eval(args: argparse.Namespace) -> int:
    from .engine.commands import run_eval

    if args.onnx is not None:
        from .engine.commands import run_eval_onnx

        _no_config_with_onnx(args)
        run_eval_onnx(
            args.onnx, opts=args.opts, data_path=args.data_path, work_dir=args.work_dir, split=args.split
        )
        return EXIT_OK
    run_eval(_config(args, args.checkpoint), data_path=args.data_path, checkpoint=args.checkpoint,
             work_dir=args.work_dir, split=args.split, device=args.device)  # fmt: skip
    return EXIT_OK


def _predict(args: argparse.Namespace) -> int:
    from .engine.commands import run_predict

    if args.onnx is not None:
        from .engine.commands import run_predict_onnx

        _no_config_with_onnx(args)
        run_predict_onnx(
            args.onnx, opts=args.opts, images=args.images, out=args.out, score_thr=args.score_thr
        )
        return EXIT_OK
    run_predict(_config(args, args.checkpoint), images=args.images, checkpoint=args.checkpoint, out=args.out,
                score_thr=args.score_thr, device=args.device)  # fmt: skip
    return EXIT_OK


def _make_synthetic(args: argparse.Namespace) -> int:
    from .data.synthetic import write_synthetic_coco

    if args.train < 1 or args.val < 0:
        raise ConfigError("--train must be at least 1 and --val at least 0")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: is a file; make-synthetic writes a directory")
    existing = [name for name in ("annotations", "train2017", "val2017") if (out / name).exists()]
    if existing:
        raise ConfigError(
            f"{out}: already holds a data set ({', '.join(existing)}); remove it or choose another OUT"
        )
    root = write_synthetic_coco(args.out, train=args.train, val=args.val, seed=args.seed)
    print(f"wrote {args.train} training and {args.val} validation images to {root}")
    return EXIT_OK


def _smoke(args: argparse.Namespace) -> int:
    from .smoke import smoke_run

    if args.steps < 1:
        raise ConfigError("--steps: must be at least 1")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise ConfigError(f"--lr {args.lr:g}: must be a positive number")
    smoke_run(_config(args), steps=args.steps, batch_size=args.batch_size, device=args.device, lr=args.lr)
    return EXIT_OK


def _check_static(args: argparse.Namespace) -> int:
    from .static_check import check_static

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: must be at least 1")
    cfg = _config(args)
    limit = cfg.model.targets.max_instances
    bad = [n for n in args.instance_counts or [] if not 0 <= n <= limit]
    if bad:
        raise ConfigError(f"--instance-counts {bad[0]}: must lie in 0..{limit} (model.targets.max_instances)")
    report = check_static(cfg, batch_size=args.batch_size, instance_counts=args.instance_counts,
                          device=args.device)  # fmt: skip
    print(json.dumps(report), flush=True)
    return EXIT_OK if report["ok"] else EXIT_FAILED


def _export(args: argparse.Namespace) -> int:
    from .engine.commands import run_export

    if args.check_batches < 1:
        raise ConfigError("--check-batches: must be at least 1")
    run_export(_config(args, args.checkpoint), checkpoint=args.checkpoint, out=args.out, canvas=args.canvas,
               batch=args.batch, opset=args.opset, atol=args.atol, check_batches=args.check_batches)  # fmt: skip
    return EXIT_OK


def _params(args: argparse.Namespace) -> int:
    from .model import build_model, parameter_counts

    print(json.dumps(parameter_counts(build_model(_config(args)))))
    return EXIT_OK


COMMANDS = {
    "train": _train, "eval": _eval, "predict": _predict, "make-synthetic": _make_synthetic, "smoke": _smoke,
    "check-static": _check_static, "params": _params, "export": _export,
}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"solov2 {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Terminated as exc:
        print(f"solov2 {args.command}: {exc}", file=sys.stderr)
        return EXIT_TERMINATED


if __name__ == "__main__":
    sys.exit(main())
