"""Device detection, backends and mixed precision, including the NPU path without Ascend hardware."""

from __future__ import annotations

import dataclasses
import datetime
import os
import subprocess
import sys

import pytest
import torch

from solov2 import device as dev
from solov2.errors import ConfigError

from .fake_npu import fake_torch_npu


def test_torch_npu_without_cann_is_reported_not_raised(monkeypatch):
    fake_torch_npu(monkeypatch, import_error=OSError("libhccl.so: cannot open shared object file"))
    ok, why = dev.npu_status()
    assert not ok and "libhccl.so" in why and "CANN" in why
    assert dev.detect_device_kind("auto") in ("cpu", "cuda")
    with pytest.raises(ConfigError, match=r"no usable NPU.*libhccl"):
        dev.detect_device_kind("npu")


def test_auto_says_why_an_installed_torch_npu_is_not_used(monkeypatch):
    assert dev.auto_device_warning("auto", "cpu") is None  # no torch_npu installed: nothing to say
    fake_torch_npu(monkeypatch, import_error=ImportError("libhccl.so: cannot open shared object file"))
    note = dev.auto_device_warning("auto", "cpu")
    assert note is not None and "libhccl.so" in note and "CANN" in note and note.endswith("running on cpu")
    assert dev.auto_device_warning("cpu", "cpu") is None  # asked for the CPU


def test_npu_is_preferred_and_uses_hccl(monkeypatch):
    calls = fake_torch_npu(monkeypatch)
    monkeypatch.setattr(torch, "device", lambda kind, index=None: (kind, index))
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("RANK", "11")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ConfigError, match="RANK=11 must lie in"):
        dev.setup_runtime("auto")
    monkeypatch.setenv("RANK", "0")
    runtime = dev.setup_runtime("auto")
    assert runtime.kind == "npu" and runtime.backend == "hccl" and calls == [3]
    assert runtime.device == ("npu", 3)


def test_no_torch_npu_installed(monkeypatch):
    monkeypatch.setattr(dev.importlib.util, "find_spec", lambda name: None)
    assert dev.npu_status() == (False, "torch_npu is not installed")


def test_backends_and_device_kinds():
    assert dev.BACKENDS == {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}
    with pytest.raises(ConfigError, match="--device"):
        dev.detect_device_kind("tpu")


def test_importing_solov2_disables_device_plugin_autoload():
    code = "import os, solov2, torch; print(os.environ['TORCH_DEVICE_BACKEND_AUTOLOAD'])"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in __import__("os").environ.items() if k != "TORCH_DEVICE_BACKEND_AUTOLOAD"},
    )
    assert out.stdout.strip() == "0"


def test_collectives_wait_30_minutes_or_what_the_environment_says_not_hccl_link_set_up(monkeypatch):
    groups: list[dict] = []
    monkeypatch.setattr(dev.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dev.dist, "init_process_group", lambda **kwargs: groups.append(kwargs))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("HCCL_CONNECT_TIMEOUT", "600")  # the operator's pods: HCCL's link set-up only
    monkeypatch.delenv(dev.DIST_TIMEOUT_ENV, raising=False)
    dev.setup_runtime("cpu")
    monkeypatch.setenv(dev.DIST_TIMEOUT_ENV, "7200")
    dev.setup_runtime("cpu")
    assert [(g["backend"], g["rank"], g["world_size"]) for g in groups] == [("gloo", 1, 2)] * 2
    assert [g["timeout"].total_seconds() for g in groups] == [1800, 7200]
    for bad, why in (("30", "at least 60 seconds"), ("1h", "expected an integer")):
        monkeypatch.setenv(dev.DIST_TIMEOUT_ENV, bad)
        with pytest.raises(ConfigError, match=f"{dev.DIST_TIMEOUT_ENV}.*{why}"):
            dev.setup_runtime("cpu")


def test_the_stop_group_beside_nccl_waits_as_long_as_the_process_group(monkeypatch):
    """On CUDA and NPU the SIGTERM agreement runs in a gloo group made beside the default one, where the
    other ranks wait while rank 0 writes a checkpoint: a new group does not inherit the default group's
    timeout (torch gives it 30 minutes), so it is passed on."""
    from solov2.engine.parallel import stop_group

    monkeypatch.setattr(dev.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dev.dist, "init_process_group", lambda **kwargs: None)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv(dev.DIST_TIMEOUT_ENV, "7200")
    runtime = dev.setup_runtime("cpu")
    assert runtime.timeout_s == 7200
    made: list[dict] = []
    monkeypatch.setattr(dev.dist, "new_group", lambda **kwargs: made.append(kwargs) or "group")
    assert stop_group(dataclasses.replace(runtime, kind="cuda")) == "group"
    assert made == [{"backend": "gloo", "timeout": datetime.timedelta(seconds=7200)}]
    assert stop_group(runtime) is None  # gloo already: the default group serves


def test_a_device_index_is_refused_with_several_processes_per_node(monkeypatch):
    """Every process of a node would bind the same device (NCCL: "Duplicate GPU detected")."""
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    with pytest.raises(ConfigError, match="--device 'cpu:1': with several processes per node"):
        dev.setup_runtime("cpu:1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert dev.setup_runtime("cpu:1").kind == "cpu"


def test_on_npus_hccl_waits_on_the_device_as_long_as_the_process_group(monkeypatch):
    """HCCL_EXEC_TIMEOUT bounds a collective on the NPU itself: left at HCCL's default it would end a
    wait that SOLOV2_DIST_TIMEOUT_SECONDS allows (rank 0 saving a large checkpoint); a value the
    environment sets wins."""
    fake_torch_npu(monkeypatch)
    monkeypatch.setattr(torch, "device", lambda kind, index=None: (kind, index))
    groups: list[dict] = []
    monkeypatch.setattr(dev.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dev.dist, "init_process_group", lambda **kwargs: groups.append(kwargs))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(dev.DIST_TIMEOUT_ENV, "7200")
    monkeypatch.setenv("HCCL_EXEC_TIMEOUT", "")  # recorded, so that what setup_runtime sets is undone
    monkeypatch.delenv("HCCL_EXEC_TIMEOUT")
    dev.setup_runtime("npu")
    assert groups[-1]["backend"] == "hccl" and groups[-1]["timeout"].total_seconds() == 7200
    assert os.environ["HCCL_EXEC_TIMEOUT"] == "7200"
    monkeypatch.setenv("HCCL_EXEC_TIMEOUT", "900")
    dev.setup_runtime("npu")
    assert os.environ["HCCL_EXEC_TIMEOUT"] == "900"
    monkeypatch.delenv("HCCL_EXEC_TIMEOUT")
    monkeypatch.setenv(dev.DIST_TIMEOUT_ENV, "86400")  # beyond what HCCL takes on a first-generation 910
    dev.setup_runtime("npu")
    assert os.environ["HCCL_EXEC_TIMEOUT"] == "17340" and groups[-1]["timeout"].total_seconds() == 86400
    monkeypatch.delenv("HCCL_EXEC_TIMEOUT")
    dev.setup_runtime("cpu")
    assert "HCCL_EXEC_TIMEOUT" not in os.environ


def test_a_process_that_joined_a_group_exits_without_finalisation(monkeypatch, capsys):
    """After a distributed run the process skips the interpreter's finalisation, where gloo's threads can
    abort a finished worker; its output is flushed first. A single process exits normally."""
    exits: list[int] = []
    monkeypatch.setattr(dev.os, "_exit", exits.append)
    monkeypatch.setattr(dev, "_JOINED", [False])
    with pytest.raises(SystemExit) as exc:
        dev.exit_process(3)
    assert exc.value.code == 3 and exits == []
    monkeypatch.setattr(dev.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dev.dist, "init_process_group", lambda **kwargs: None)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    dev.setup_runtime("cpu")
    print("last words")
    dev.exit_process(143)
    assert exits == [143] and capsys.readouterr().out == "last words\n"
