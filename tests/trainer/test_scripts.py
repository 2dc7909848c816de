"""The ModelZoo entry points pass --data_path and friends to solov2 / torchrun as their users expect."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "trainer" / "scripts"


@pytest.fixture
def recorder(tmp_path):
    """Stand-ins for `solov2` and `torchrun` that record their arguments."""
    log = tmp_path / "calls"
    stub = tmp_path / "stub"
    stub.write_text(f'#!/usr/bin/env bash\necho "$(basename "$0") $*" >> {log}\n')
    stub.chmod(0o755)
    env = {**os.environ, "SOLOV2": str(stub), "TORCHRUN": str(stub)}
    return env, log


def _run(script: str, *args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPTS / script), *args], env=env, cwd=cwd, capture_output=True, text=True
    )


def test_full_1p_trains_the_r50_recipe_and_resumes(recorder, tmp_path):
    env, log = recorder
    data = tmp_path / "coco"
    data.mkdir()
    res = _run("train_full_1p.sh", f"--data_path={data}", env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    call = log.read_text().split()
    assert call[1:3] == ["train", "--config"] and call[3] == "solov2_r50_fpn_1x_coco"
    assert call[call.index("--data-path") + 1] == str(data)
    assert call[call.index("--work-dir") + 1] == "output/1p" and "--resume" in call
    assert (tmp_path / "output" / "1p" / "train.log").is_file()


def test_full_8p_uses_torchrun_with_8_processes(recorder, tmp_path):
    env, log = recorder
    res = _run(
        "train_full_8p.sh", f"--data_path={tmp_path}", "--epochs=2", "--", "--compile", env=env, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    call = log.read_text().split()
    assert call[call.index("--nproc-per-node") + 1] == "8"
    assert call[call.index("-m") + 1 : call.index("-m") + 3] == ["solov2.cli", "train"]
    assert "train.epochs=2" in call and call[-1] == "--compile"


def test_eval_and_finetune_need_a_checkpoint(recorder, tmp_path):
    env, log = recorder
    res = _run(
        "train_eval_1p.sh", f"--data_path={tmp_path}", "--checkpoint=missing.pth", env=env, cwd=tmp_path
    )
    assert res.returncode == 2 and "missing.pth" in res.stderr
    res = _run("train_finetune_1p.sh", f"--data_path={tmp_path}", env=env, cwd=tmp_path)
    assert res.returncode == 2 and "--checkpoint" in res.stderr
    ckpt = tmp_path / "w.pth"
    ckpt.write_bytes(b"")
    res = _run(
        "train_finetune_1p.sh", f"--data_path={tmp_path}", f"--checkpoint={ckpt}", env=env, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    call = log.read_text().split()
    assert call[call.index("--load-from") + 1] == str(ckpt)


def test_missing_or_wrong_data_path_is_a_clear_error(recorder, tmp_path):
    env, _ = recorder
    res = _run("train_full_1p.sh", env=env, cwd=tmp_path)
    assert res.returncode == 2 and "--data_path=DIR is required" in res.stderr
    res = _run("train_full_1p.sh", "--data_path=/no/such/dir", env=env, cwd=tmp_path)
    assert res.returncode == 2 and "/no/such/dir" in res.stderr
    res = _run("train_full_1p.sh", "--data-path=x", env=env, cwd=tmp_path)
    assert res.returncode == 2 and "unknown argument" in res.stderr
    res = _run("train_full_1p.sh", "--help", env=env, cwd=tmp_path)  # readable with | less
    assert res.returncode == 0 and "--data_path=DIR" in res.stdout


def test_full_1p_uses_the_modelzoo_pretrained_backbone_or_the_given_one(recorder, tmp_path):
    env, log = recorder
    data = tmp_path / "data" / "coco"
    data.mkdir(parents=True)
    assert _run("train_full_1p.sh", f"--data_path={data}", env=env, cwd=tmp_path).returncode == 0
    assert "model.backbone.weights" not in log.read_text()
    weights = tmp_path / "data" / "pretrained" / "resnet50.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"")
    log.unlink()
    res = _run("train_full_1p.sh", f"--data_path={data}", env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"model.backbone.weights={weights}" in log.read_text().split()
    log.unlink()
    res = _run("train_full_1p.sh", f"--data_path={data}", "--pretrained=mine.pth", env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "model.backbone.weights=mine.pth" in log.read_text().split()


def test_a_flag_a_script_does_not_take_is_refused_not_ignored(recorder, tmp_path):
    env, log = recorder
    cases = [
        ("train_finetune_1p.sh", ["--checkpoint=x"], "--pretrained=w.pth"),
        ("train_eval_1p.sh", ["--checkpoint=x"], "--epochs=3"),
        ("train_full_1p.sh", [], "--nproc=4"),
    ]
    for script, needed, flag in cases:
        res = _run(script, f"--data_path={tmp_path}", *needed, flag, env=env, cwd=tmp_path)
        assert res.returncode == 2 and f"unknown argument '{flag}'" in res.stderr, (script, res.stderr)
        assert not log.exists()
    res = _run("train_full_1p.sh", "--data_path", str(tmp_path), env=env, cwd=tmp_path)  # not --name=value
    assert res.returncode == 2 and "each as --name=value" in res.stderr
    # A checkpoints directory serves as --checkpoint (its newest, as solov2 takes it).
    ckpts = tmp_path / "output" / "8p" / "checkpoints"
    ckpts.mkdir(parents=True)
    res = _run("train_eval_1p.sh", f"--data_path={tmp_path}", f"--checkpoint={ckpts}", env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    call = log.read_text().split()
    assert call[call.index("--checkpoint") + 1] == str(ckpts)


def test_cann_is_loaded_even_where_its_set_env_reads_unset_variables(tmp_path):
    """CANN's set_env.sh extends LD_LIBRARY_PATH and PYTHONPATH unguarded; the scripts run with
    ``set -u``, which would end them there with "unbound variable" on a machine where both are unset."""
    cann = tmp_path / "cann"
    cann.mkdir()
    (cann / "set_env.sh").write_text(
        "export LD_LIBRARY_PATH=/cann/lib64:$LD_LIBRARY_PATH\nexport PYTHONPATH=/cann/python:$PYTHONPATH\n"
        "export CANN_LOADED=yes\n"
    )
    log = tmp_path / "calls"
    stub = tmp_path / "stub"
    stub.write_text(
        f'#!/usr/bin/env bash\necho "$CANN_LOADED $HCCL_EXEC_TIMEOUT $LD_LIBRARY_PATH" >> {log}\n'
    )
    stub.chmod(0o755)
    env = {
        k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "PYTHONPATH", "HCCL_EXEC_TIMEOUT")
    }
    env |= {"SOLOV2": str(stub), "TORCHRUN": str(stub), "ASCEND_HOME_PATH": str(cann),
            "ASCEND_TOOLKIT_HOME": str(cann), "SOLOV2_DIST_TIMEOUT_SECONDS": "3600"}  # fmt: skip
    res = _run("train_full_1p.sh", f"--data_path={tmp_path}", env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert log.read_text().split() == ["yes", "3600", "/cann/lib64:"]
    (cann / "set_env.sh").unlink()
    res = _run("train_full_1p.sh", f"--data_path={tmp_path}", env=env, cwd=tmp_path)
    assert res.returncode == 0 and "found no CANN set_env.sh" in res.stderr


def test_without_solov2_on_the_path_the_checkouts_environment_runs_or_the_fix_is_named(tmp_path):
    """A user who ran `make setup` but did not activate .venv: the scripts find the checkout's."""
    import shutil

    env = {k: v for k, v in os.environ.items() if k != "SOLOV2"}
    env["PATH"] = "/usr/bin:/bin"
    data = tmp_path / "coco"
    data.mkdir()
    venv = SCRIPTS.parents[1] / ".venv" / "bin" / "solov2"
    if venv.exists():
        res = _run(
            "train_full_1p.sh", f"--data_path={data}", f"--work_dir={tmp_path / 'w'}", env=env, cwd=tmp_path
        )
        assert res.returncode == 2 and "annotation file not found" in res.stdout + res.stderr, res.stderr
    elsewhere = tmp_path / "copy" / "trainer" / "scripts"
    shutil.copytree(SCRIPTS, elsewhere)
    res = subprocess.run(["bash", str(elsewhere / "train_full_1p.sh"), f"--data_path={data}"], env=env,
                         cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 2 and "solov2 is not on the PATH: activate the environment" in res.stderr


def test_performance_8p_runs_torchrun_for_the_steps_without_evaluation_and_reports_its_fps(tmp_path):
    log = tmp_path / "calls"
    stub = tmp_path / "torchrun"
    # Records its arguments and writes the results a training would, into the --work-dir it is given: one
    # whose whole schedule is shorter than the 500 steps asked for.
    stub.write_text(
        f'#!/usr/bin/env bash\necho "$*" >> {log}\nwhile [ "$1" != --work-dir ]; do shift; done\n'
        "printf '%s\\n' '{' '  \"iterations\": 480,' '  \"images_per_second\": 41.25,' '  \"epochs\": 0' '}'"
        ' > "$2/results.json"\n'
    )
    stub.chmod(0o755)
    env = {**os.environ, "TORCHRUN": str(stub)}
    res = _run("train_performance_8p.sh", f"--data_path={tmp_path}", env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    call = log.read_text().split()
    assert call[call.index("--nproc-per-node") + 1] == "8" and "--no-eval" in call and "--resume" not in call
    assert "train.max_iters=500" in call
    run_dir = Path(call[call.index("--work-dir") + 1])
    assert run_dir.parent == Path("output/perf_8p") and not (tmp_path / run_dir).exists()  # deleted
    assert "FPS: 41.25 images/s over 480 iterations" in res.stdout
    assert (
        json.loads((tmp_path / "output" / "perf_8p" / "results.json").read_text())["images_per_second"]
        == 41.25
    )
    res = _run("train_full_8p.sh", f"--data_path={tmp_path}", "--steps=10", env=env, cwd=tmp_path)
    assert res.returncode == 2 and "unknown argument '--steps=10'" in res.stderr
