"""``solov2``: the trainer's command line.

Every model sub-command takes ``--config`` (a YAML path or the name of a shipped config) and
``--opts`` (``key=value`` overrides, values parsed as YAML). Bad input (a config field, a file, a data
set) is reported in one line naming the field or file, with exit status 2. The parser is built in
:mod:`solov2.cli_parser` (``build_parser`` is importable from here too).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli_parser import FlagError, build_parser, termination_log, termination_log_of
from .config import Config, config_from_dict, load_config
from .engine.failures import Terminated
from .engine.work_dir_lock import WorkDirBusy
from .errors import ConfigError, UserError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT


def _config(args: argparse.Namespace, checkpoint: Path | None = None) -> Config:
    if args.config is not None:
        return load_config(args.config, args.opts)
    from .engine.checkpoint import read_config

    return config_from_dict(read_config(checkpoint), args.opts)  # type: ignore[arg-type]


def _train(args: argparse.Namespace) -> int:
    from .engine.failures import report_failure
    from .engine.train import TrainOptions, train

    log = termination_log(args.termination_log)
    try:
        if not (math.isfinite(args.stop_timeout) and args.stop_timeout > 0):
            raise ConfigError(f"--stop-timeout {args.stop_timeout:g}: must be a positive number of seconds")
        cfg = _config(args)
    except UserError as exc:  # the operator reads why the run never started
        report_failure(log, exc)
        raise
    opts = TrainOptions(
        data_path=args.data_path, work_dir=args.work_dir, device=args.device, resume=args.resume,
        load_from=args.load_from, compile=args.compile, compile_mode=args.compile_mode, evaluate=not args.no_eval,
        termination_log=log, metrics_port=args.metrics_port,
        skip_bad_images=args.skip_bad_images, config_name=str(args.config), stop_timeout=args.stop_timeout,
    )  # fmt: skip
    train(cfg, opts)
    return EXIT_OK


def _no_config_with_onnx(args: argparse.Namespace) -> None:
    if args.config is not None:
        raise ConfigError("--config: not used with --onnx (the file holds its config; --opts still apply)")
    if args.device not in ("auto", "cpu"):
        raise ConfigError(f"--device {args.device}: not used with --onnx (onnxruntime runs it on the CPU)")


def _eval(args: argparse.Namespace) -> int:
    from .engine.commands import run_eval
    from .engine.startup import check_output_dir

    if args.work_dir is not None:
        check_output_dir(f"--work-dir {args.work_dir}", args.work_dir)
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
    from .engine.predict import check_image_paths
    from .engine.startup import check_output_dir

    if args.onnx is not None:
        _no_config_with_onnx(args)
    check_image_paths(args.images)
    check_output_dir(f"--out {args.out}", args.out)
    if args.onnx is not None:
        from .engine.commands import run_predict_onnx

        run_predict_onnx(
            args.onnx, opts=args.opts, images=args.images, out=args.out, score_thr=args.score_thr
        )
        return EXIT_OK
    run_predict(_config(args, args.checkpoint), images=args.images, checkpoint=args.checkpoint, out=args.out,
                score_thr=args.score_thr, device=args.device)  # fmt: skip
    return EXIT_OK


def _make_synthetic(args: argparse.Namespace) -> int:
    from .data.synthetic import write_synthetic_coco
    from .engine.startup import check_output_dir

    if args.train < 1 or args.val < 0:
        raise ConfigError("--train must be at least 1 and --val at least 0")
    out: Path = args.out
    check_output_dir(str(out), out)
    existing = [name for name in ("annotations", "train2017", "val2017") if (out / name).exists()]
    if existing:
        raise ConfigError(
            f"{out}: already holds a data set ({', '.join(existing)}); remove it or choose another OUT"
        )
    root = write_synthetic_coco(args.out, train=args.train, val=args.val, seed=args.seed)
    print(f"wrote {args.train} training and {args.val} validation images to {root}")
    return EXIT_OK


def _smoke(args: argparse.Namespace) -> int:
    from .device import select_device
    from .smoke import smoke_run

    if args.steps < 1:
        raise ConfigError("--steps: must be at least 1")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise ConfigError(f"--lr {args.lr:g}: must be a positive number")
    device = select_device(args.device)
    smoke_run(_config(args), steps=args.steps, batch_size=args.batch_size, device=device, lr=args.lr)
    return EXIT_OK


def _check_static(args: argparse.Namespace) -> int:
    from .device import select_device
    from .static_check import check_static

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: must be at least 1")
    cfg = _config(args)
    limit = cfg.model.targets.max_instances
    bad = [n for n in args.instance_counts or [] if not 0 <= n <= limit]
    if bad:
        raise ConfigError(f"--instance-counts {bad[0]}: must lie in 0..{limit} (model.targets.max_instances)")
    report = check_static(cfg, batch_size=args.batch_size, instance_counts=args.instance_counts,
                          device=select_device(args.device))  # fmt: skip
    print(json.dumps(report), flush=True)
    return EXIT_OK if report["ok"] else EXIT_FAILED


def _export(args: argparse.Namespace) -> int:
    from .engine.commands import run_export
    from .engine.startup import check_output_file

    if args.check_batches < 1:
        raise ConfigError("--check-batches: must be at least 1")
    if not args.atol >= 0:  # inf: no tolerance check
        raise ConfigError(f"--atol {args.atol:g}: must be a number >= 0")
    check_output_file(f"--out {args.out}", args.out)
    run_export(_config(args, args.checkpoint), checkpoint=args.checkpoint, out=args.out, canvas=args.canvas,
               batch=args.batch, opset=args.opset, atol=args.atol, check_batches=args.check_batches)  # fmt: skip
    return EXIT_OK


def _params(args: argparse.Namespace) -> int:
    from .model import build_model, parameter_counts

    print(json.dumps(parameter_counts(build_model(_config(args)))))
    return EXIT_OK


def _env(args: argparse.Namespace) -> int:
    from .env_report import environment_report, format_report

    report = environment_report(_config(args), args.device)
    print(json.dumps(report) if args.json else format_report(report))
    return EXIT_OK


COMMANDS = {
    "train": _train, "eval": _eval, "predict": _predict, "make-synthetic": _make_synthetic, "smoke": _smoke,
    "check-static": _check_static, "params": _params, "export": _export, "env": _env,
}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except FlagError as exc:
        if "train" in argv[:1]:  # the operator reads why the run never started: not retryable
            from .engine.failures import report_failure

            report_failure(termination_log_of(argv), ConfigError(str(exc)))
        exc.exit()
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"solov2 {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Terminated as exc:  # 143 on SIGTERM, 130 on SIGINT
        print(f"solov2 {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except WorkDirBusy as exc:  # retryable: the termination message says so
        print(f"solov2 {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"solov2 {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # as torchrun runs it
    from .device import exit_process

    exit_process(main())
