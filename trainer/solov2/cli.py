"""``solov2``: the trainer's command line.

Every sub-command takes ``--config`` (a YAML path or the name of a shipped config) and ``--opts``
(``key=value`` overrides, values parsed as YAML). Errors in the config or the input are reported in
one line naming the field, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .config import CONFIG_DIR, Config, load_config
from .errors import ConfigError, UserError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _add_config_args(parser: argparse.ArgumentParser, default: str) -> None:
    shipped = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    parser.add_argument(
        "--config",
        default=default,
        help=f"YAML config: a file path or a shipped name ({shipped}). Default: %(default)s",
    )
    parser.add_argument(
        "--opts",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override config fields, e.g. --opts model.head.num_grids=[12,10,8,6,4] "
        "train.base_lr=0.02 (values are parsed as YAML)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="solov2",
        description="Static-shape SOLOv2 instance segmentation: train, evaluate and audit on CPU, CUDA or NPU.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    p.add_argument(
        "--device", default="cpu", help="torch device: cpu, cuda, cuda:1, npu:0 (default: %(default)s)"
    )
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: train.base_lr)")

    p = sub.add_parser(
        "check-static",
        help="prove the training step and post-processing compile to one static graph",
        description="Compile forward + targets + losses + backward, and inference + Matrix NMS, with "
        "torch.compile(fullgraph=True, dynamic=False) on batches with different instance counts "
        "(zero included). Prints one JSON line; exits 1 unless each path has one graph, no graph "
        "break, no recompilation and no data-dependent operator.",
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
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")

    p = sub.add_parser(
        "params",
        help="print the model's parameter counts as JSON",
        description="Build the model and print parameters per part (backbone, FPN, head).",
    )
    _add_config_args(p, "solov2_r50_fpn_1x_coco")
    return parser


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.opts)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = _load(args)
        if args.command == "smoke":
            from .smoke import smoke_run

            if args.steps < 1:
                raise ConfigError("--steps: must be at least 1")
            smoke_run(cfg, steps=args.steps, batch_size=args.batch_size, device=args.device, lr=args.lr)
            return EXIT_OK
        if args.command == "check-static":
            from .static_check import check_static

            report = check_static(
                cfg, batch_size=args.batch_size, instance_counts=args.instance_counts, device=args.device
            )
            print(json.dumps(report), flush=True)
            return EXIT_OK if report["ok"] else EXIT_FAILED
        if args.command == "params":
            from .model import build_model, parameter_counts

            print(json.dumps(parameter_counts(build_model(cfg))))
            return EXIT_OK
    except UserError as exc:
        print(f"solov2 {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    raise AssertionError(f"unhandled command {args.command}")  # argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
