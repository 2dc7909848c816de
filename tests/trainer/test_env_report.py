"""``solov2 env``: what a machine or pod gives the trainer, before a long run finds out."""

from __future__ import annotations

import json
from collections import namedtuple

import pytest

import solov2.data.shared_memory as shm
from solov2 import device as dev
from solov2.cli import main
from solov2.data.cpus import available_cpus
from solov2.engine.optim import has_fused_kernel

from .fake_npu import fake_torch_npu

Usage = namedtuple("Usage", "total used free")


def _env(capsys, *args: str) -> tuple[int, str]:
    code = main(["env", *args])
    return code, capsys.readouterr().out


def test_the_json_report_says_what_a_training_here_would_use(capsys, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("MASTER_ADDR", "t-worker-0.t.ns.svc")
    monkeypatch.setenv(dev.DIST_TIMEOUT_ENV, "3600")
    code, out = _env(capsys, "--json")
    report = json.loads(out)
    assert code == 0
    kind = dev.detect_device_kind("auto")
    assert report["device"] == {"requested": "auto", "kind": kind, "backend": dev.BACKENDS[kind]}
    assert report["packages"]["torch"] and report["packages"]["pycocotools"]
    assert report["backends"]["gloo"] is True
    assert report["fused_optimizers"] == {
        "sgd": has_fused_kernel("sgd", kind),
        "adamw": has_fused_kernel("adamw", kind),
    }
    assert report["cpus"]["this_process"] == available_cpus() and report["cpus"]["local_processes"] == 4
    assert report["dist_timeout_s"] == 3600
    assert report["environment"]["MASTER_ADDR"] == "t-worker-0.t.ns.svc"


def test_the_text_report_names_an_unusable_torch_npu_and_a_small_shm(capsys, monkeypatch):
    fake_torch_npu(monkeypatch, import_error=ImportError("libhccl.so: cannot open shared object file"))
    monkeypatch.setattr(shm.shutil, "disk_usage", lambda _p: Usage(64 * 2**20, 0, 64 * 2**20))
    code, out = _env(capsys, "--opts", "data.workers=8")
    assert code == 0
    lines = dict(line.split(None, 1) for line in out.splitlines() if not line.startswith("warning"))
    assert lines["npu"].startswith("not used: torch_npu failed to import (ImportError: libhccl.so")
    assert lines["loaders"].startswith("8 worker(s) per process")
    assert lines["shm"] == "/dev/shm 0.1 GiB"
    assert out.splitlines()[-1].startswith("warning: /dev/shm holds 64 MiB, but the loaders may keep up to")


def test_usable_npus_are_named_with_their_bf16_and_fp16_overflow(capsys, monkeypatch):
    """What decides the amp settings that work on them: a first-generation 910 has no bf16 and
    saturates fp16 overflows (a dynamic loss scale is refused there)."""
    import sys
    import types

    fake_torch_npu(monkeypatch, count=2, device_name="Ascend910A")
    utils = types.ModuleType("torch_npu.npu.utils")
    utils.is_bf16_supported = lambda: False
    utils.is_support_inf_nan = lambda: False
    monkeypatch.setitem(sys.modules, "torch_npu.npu.utils", utils)
    code, out = _env(capsys)
    lines = dict(line.split(None, 1) for line in out.splitlines() if not line.startswith("warning"))
    assert code == 0 and lines["device"].startswith("--device auto -> npu (hccl")
    assert lines["npu"] == "Ascend910A, Ascend910A (bf16 False, fp16 overflow saturates)"
    utils.is_bf16_supported = utils.is_support_inf_nan = lambda: True
    code, out = _env(capsys, "--json")
    npu = json.loads(out)["npu"]
    assert (npu["devices"], npu["bf16"], npu["fp16_overflow"]) == (["Ascend910A"] * 2, True, "inf/nan")


def test_an_explicit_device_that_is_not_there_exits_2(capsys, monkeypatch):
    fake_torch_npu(monkeypatch, import_error=OSError("libascendcl.so: cannot open shared object file"))
    assert main(["env", "--device", "npu"]) == 2
    assert "--device npu: no usable NPU: torch_npu failed to import" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["30", "soon"])
def test_a_bad_dist_timeout_is_refused(capsys, monkeypatch, value):
    monkeypatch.setenv(dev.DIST_TIMEOUT_ENV, value)
    assert main(["env"]) == 2
    assert dev.DIST_TIMEOUT_ENV in capsys.readouterr().err
