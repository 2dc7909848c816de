"""Ordinary mistakes, through the CLI: exit status 2 and one line naming the field, flag or file; for
`train`, the same text in the termination message, marked not retryable. None of these trains."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest

from solov2.cli import main

TINY = ["--config", "solov2_tiny_cpu"]


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    prefix = f"solov2 {command}: error: "
    assert err.startswith(prefix), err
    return err[len(prefix) :]


def _train(data: Path, work: Path, log: Path | str, *extra: str) -> int:
    return main(["train", *TINY, "--data-path", str(data), "--work-dir", str(work), "--device", "cpu",
                 "--termination-log", str(log), *extra])  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "named", "error_type"),
    [
        (["--opts", "train.momentum=-5"], "train.momentum", "ConfigError"),
        (["--opts", "train.weight_decay=-1"], "train.weight_decay", "ConfigError"),
        (["--opts", "train.base_lr=.inf"], "train.base_lr", "ConfigError"),
        (["--opts", "no.such=1"], "no: unknown key", "ConfigError"),
        (["--config", "no_such_config"], "no_such_config", "ConfigError"),
        (["--device", "tpu"], "--device", "ConfigError"),
        (["--metrics-port", "70000"], "--metrics-port 70000", "ConfigError"),
        (["--metrics-port", "-1"], "--metrics-port -1", "ConfigError"),
        (["--stop-timeout", "0"], "--stop-timeout", "ConfigError"),
    ],
)
def test_config_flag_and_device_errors_write_the_termination_message(
    small_coco, tmp_path, capsys, extra, named, error_type
):
    log = tmp_path / "termination-log"
    assert _train(small_coco, tmp_path / "work", log, *extra) == 2
    error = _one_line_error(capsys, "train")
    assert named in error
    message = json.loads(log.read_text())
    assert message == {"error": error, "error_type": error_type, "retryable": False}


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--metrics-port", "abc"], "argument --metrics-port: invalid int value: 'abc'"),
        (["--compile-mode", "fastest"], "argument --compile-mode: invalid choice: 'fastest'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (
            ["--epochs", "1"],
            "unrecognized arguments: --epochs 1 (config fields go in --opts: --opts train.epochs=1)",
        ),
    ],
)
def test_flags_argparse_refuses_write_the_termination_message_too(small_coco, tmp_path, capsys, extra, named):
    log = tmp_path / "termination-log"
    with pytest.raises(SystemExit) as exc:
        _train(small_coco, tmp_path / "work", log, *extra)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: solov2 train ") and named in err.splitlines()[-1]  # the sub-command's usage
    message = json.loads(log.read_text())
    assert (
        named in message["error"] and message["error_type"] == "ConfigError" and message["retryable"] is False
    )


def test_an_unknown_flag_is_blamed_on_the_parser_it_was_given_to(tmp_path, capsys):
    evaluate = ["eval", "--data-path", str(tmp_path), "--checkpoint", str(tmp_path / "c.pth")]
    for argv, usage, owner in [
        (["--bogus", *evaluate], "usage: solov2 [-h] COMMAND", "solov2"),
        ([*evaluate, "--bogus"], "usage: solov2 eval ", "solov2 eval"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(usage), err
        assert err.splitlines()[-1] == f"{owner}: error: unrecognized arguments: --bogus"


def test_the_default_termination_log_is_used_only_where_kubernetes_made_it(small_coco, tmp_path, capsys):
    from solov2.cli_parser import DEFAULT_TERMINATION_LOG, build_parser, termination_log

    args = build_parser().parse_args(["train", "--data-path", "d", "--work-dir", "w"])
    assert args.termination_log is DEFAULT_TERMINATION_LOG
    assert termination_log(args.termination_log) == (
        DEFAULT_TERMINATION_LOG if DEFAULT_TERMINATION_LOG.exists() else None
    )
    explicit = tmp_path / "missing-dir" / "termination-log"
    assert termination_log(explicit) == explicit  # given explicitly, it is checked: the run refuses it
    assert _train(small_coco, tmp_path / "work", explicit) == 2
    assert "--termination-log" in _one_line_error(capsys, "train")


def test_metrics_port_in_use_is_named_before_anything_loads(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        log = tmp_path / "termination-log"
        # No data set there: the port is checked first.
        assert _train(tmp_path / "no-data", tmp_path / "work", log, "--metrics-port", str(port)) == 2
    error = _one_line_error(capsys, "train")
    assert error.startswith(f"--metrics-port {port}: cannot listen")
    assert json.loads(log.read_text())["retryable"] is False


def test_output_paths_are_checked_before_anything_loads(tmp_path, capsys):
    """The data path does not even exist: the output checks come first, and name the flag."""
    nowhere = tmp_path / "no-data"
    assert _train(nowhere, tmp_path / "work", tmp_path / "missing-dir" / "log") == 2
    assert _one_line_error(capsys, "train").startswith(
        f"--termination-log {tmp_path / 'missing-dir' / 'log'}:"
    )
    assert _train(nowhere, tmp_path / "work", tmp_path) == 2
    assert "is a directory" in _one_line_error(capsys, "train")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    log = tmp_path / "termination-log"
    assert _train(nowhere, a_file, log) == 2
    error = _one_line_error(capsys, "train")
    assert error == f"--work-dir {a_file}: is a file, not a directory"
    assert json.loads(log.read_text())["error"] == error


def _rewrite_annotations(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    ann = dst / "annotations" / "instances_train2017.json"
    data = json.loads(ann.read_text())
    edit(data)
    ann.write_text(json.dumps(data))
    return ann


def _three_number_bbox(data: dict) -> None:
    data["annotations"][1]["bbox"] = data["annotations"][1]["bbox"][:3]


def _duplicate_image_id(data: dict) -> None:
    data["images"][2]["id"] = data["images"][1]["id"]


@pytest.mark.parametrize(
    ("edit", "named"),
    [(_three_number_bbox, "has bbox ["), (_duplicate_image_id, "image id ")],
    ids=["bbox-of-3-numbers", "duplicate-image-id"],
)
def test_bad_annotations_name_the_file_and_entry(small_coco, tmp_path, capsys, edit, named):
    ann = _rewrite_annotations(small_coco, tmp_path / "data", edit)
    log = tmp_path / "termination-log"
    assert _train(tmp_path / "data", tmp_path / "work", log) == 2
    error = _one_line_error(capsys, "train")
    assert error.startswith(f"{ann}: ") and named in error
    assert json.loads(log.read_text()) == {"error": error, "error_type": "DataError", "retryable": False}


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["check-static", "--instance-counts", "-1"], "--instance-counts -1"),
        (["check-static", "--batch-size", "0"], "--batch-size 0"),
        (["smoke", "--lr", "-5"], "--lr -5"),
        (["smoke", "--batch-size", "0"], "--batch-size 0"),
        (["smoke", "--device", "tpu"], "--device: expected auto, cpu, cuda or npu"),
        (["check-static", "--device", "npu"], "--device npu: no usable NPU"),
        (["params", *TINY, "--opts", "train.base_lr=abc"], "train.base_lr"),
    ],
)
def test_command_flags_are_refused_in_one_line(capsys, argv, named):
    assert main(argv) == 2
    assert _one_line_error(capsys, argv[0]).startswith(named)


def test_make_synthetic_refuses_a_file_and_an_existing_set(tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert main(["make-synthetic", str(a_file), "--train", "2", "--val", "1"]) == 2
    assert _one_line_error(capsys, "make-synthetic") == f"{a_file}: is a file, not a directory"
    out = tmp_path / "set"
    assert main(["make-synthetic", str(out), "--train", "2", "--val", "1"]) == 0
    capsys.readouterr()
    assert main(["make-synthetic", str(out), "--train", "3", "--val", "1"]) == 2
    assert "already holds a data set" in _one_line_error(capsys, "make-synthetic")
    assert len(list((out / "train2017").iterdir())) == 2  # the first set is untouched


def test_every_command_checks_its_output_paths_before_it_loads_or_computes(tmp_path, capsys):
    """A file where a directory must go is named at once (the checkpoint given does not even exist:
    the output checks come first), not after an evaluation or an export as a traceback."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    missing = str(tmp_path / "no-such.pth")
    broken = tmp_path / "broken-link"
    broken.symlink_to(tmp_path / "gone")
    dangling = f"{str(broken)!r} links to {str(tmp_path / 'gone')!r}, which does not exist"
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    cases = [
        (["predict", str(a_file), "--checkpoint", missing, "--out", str(broken)], f"--out {broken}: {dangling}"),
        (["export", "--checkpoint", missing, "--out", str(broken / "m.onnx")], f"--out {broken}/m.onnx: {dangling}"),
        (["export", "--checkpoint", missing, "--out", str(broken)], f"--out {broken}: {dangling}"),
        (["predict", str(a_file), "--checkpoint", missing, "--out", str(loop)],
         f"--out {loop}: {str(loop)!r} is a loop of"),
        (["make-synthetic", str(a_file / "set"), "--train", "1", "--val", "0"], f"{a_file / 'set'}: {str(a_file)!r}"),
        (["predict", str(a_file), "--checkpoint", missing, "--out", str(a_file)], f"--out {a_file}: is a file"),
        (["eval", "--data-path", str(tmp_path), "--checkpoint", missing, "--work-dir", str(a_file / "sub")],
         f"--work-dir {a_file / 'sub'}: {str(a_file)!r} is a file, not a directory"),
        (["export", "--checkpoint", missing, "--out", str(a_file / "m.onnx")],
         f"--out {a_file / 'm.onnx'}: {str(a_file)!r}"),
        (["export", "--checkpoint", missing, "--out", str(tmp_path)], f"--out {tmp_path}: is a directory"),
        (["export", "--checkpoint", missing, "--out", str(tmp_path / "m.onnx"), "--atol", "-1"], "--atol -1: must be"),
    ]  # fmt: skip
    for argv, named in cases:
        assert main(argv) == 2, argv
        assert _one_line_error(capsys, argv[0]).startswith(named), argv
    # Checking creates nothing: a command refused for another reason leaves no empty output folder.
    fresh = tmp_path / "fresh" / "sub"
    for argv in (["eval", "--data-path", str(tmp_path), "--checkpoint", missing, "--work-dir", str(fresh)],
                 ["export", "--checkpoint", missing, "--out", str(fresh / "m.onnx")]):  # fmt: skip
        assert main(argv) == 2 and "no such file" in _one_line_error(capsys, argv[0])
    assert not (tmp_path / "fresh").exists()
    assert _train(tmp_path / "no-data", tmp_path / "work", broken) == 2
    assert _one_line_error(capsys, "train") == f"--termination-log {broken}: {dangling}"
    assert _train(tmp_path / "no-data", tmp_path / "work", a_file / "tl") == 2
    assert (
        _one_line_error(capsys, "train")
        == f"--termination-log {a_file / 'tl'}: {str(a_file)!r} is a file, not a directory"
    )
