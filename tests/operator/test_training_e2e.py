"""End to end: SOLOv2Trainings really train through the operator. The emulator plays the API server,
the test kubelet runs each worker pod as a local torchrun process (2 nodes x 1 CPU process, gloo) on a
generated data set."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Cluster
from .kubelet import Kubelet

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]
SOLOV2 = str(Path(sys.executable).with_name("solov2"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def claims(tmp_path_factory) -> Path:
    """Folder of the kubelet's volume claims, with claim ``data`` holding 16 + 4 generated images."""
    root = tmp_path_factory.mktemp("kubelet")
    subprocess.run(
        [SOLOV2, "make-synthetic", str(root / "claims" / "data"), "--train", "16", "--val", "4", "--seed", "1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return root


def training_spec(*opts: str, **fields) -> dict:
    return {
        "image": "solov2:cpu", "device": "cpu", "nodes": 2, "devicesPerNode": 1, "config": "solov2_tiny_cpu",
        "dataVolume": {"claimName": "data"}, "checkpointVolume": {"claimName": "ckpt"},
        "opts": ["train.log_interval=1", "train.checkpoint_interval=2", "train.epochs=2", *opts],
        "masterPort": free_port(), "metricsPort": free_port(), "backoffLimit": 2, **fields,
    }  # fmt: skip


async def wait_progress(cluster: Cluster, name: str, iteration: int, timeout: float = 120) -> None:
    await cluster.wait(
        lambda: cluster.training(name)["status"]["progress"]["iteration"] >= iteration,
        timeout=timeout, message=f"iteration {iteration}",
    )  # fmt: skip


def resumed(log: str) -> bool:
    """The trainer's log says it resumed from a checkpoint (not "no checkpoint ... yet")."""
    return re.search(r"resume: \S+ at epoch \d+, iteration [1-9]", log) is not None


def worker_log(root: Path, pod: str) -> str:
    return (root / "pods" / pod / "output.log").read_text(errors="replace")


async def test_a_training_succeeds_with_mask_ap_and_progress_moves(cluster: Cluster, claims: Path):
    async with Kubelet(cluster.emulator, cluster.core, claims):
        # thresholds at 0: the briefly trained model detects something, so the AP is not 0 by default
        await cluster.create(
            "e2e-ok", training_spec("model.inference.score_thr=0.0", "model.inference.update_thr=0.0")
        )
        seen: set[int] = set()

        def finished() -> bool:
            status = cluster.training("e2e-ok").get("status") or {}
            if "progress" in status and status.get("phase") == "Running":
                seen.add(status["progress"]["iteration"])
            return status.get("phase") in ("Succeeded", "Failed")

        await cluster.wait(finished, timeout=180, message="the end of training")
        status = cluster.training("e2e-ok")["status"]
        assert status["phase"] == "Succeeded", status
        assert status.get("restarts", 0) == 0, cluster.event_messages("e2e-ok", "WorkerFailed")
        assert 0 < status["results"]["segmAP50"] <= 1, status["results"]
        assert status["results"]["iterations"] == 8 and status["results"]["epochs"] == 2
        assert len(seen) >= 2, f"progress seen at iterations {sorted(seen)} only"
        assert status["progress"]["totalIterations"] == 8


async def test_a_killed_worker_restarts_the_gang_which_resumes_and_succeeds(cluster: Cluster, claims: Path):
    async with Kubelet(cluster.emulator, cluster.core, claims) as kubelet:
        await cluster.create("e2e-kill", training_spec("train.epochs=3"))
        await wait_progress(cluster, "e2e-kill", 3)  # a checkpoint at iteration 2 exists
        await kubelet.kill("e2e-kill-worker-1")
        await cluster.wait(lambda: cluster.training("e2e-kill")["status"].get("restarts") == 1, timeout=60)
        await cluster.wait(lambda: cluster.phase("e2e-kill") in ("Succeeded", "Failed"), timeout=180)
        status = cluster.training("e2e-kill")["status"]
        assert status["phase"] == "Succeeded", status
        assert status["restarts"] == 1, cluster.event_messages("e2e-kill", "WorkerFailed")
        assert resumed(worker_log(claims, "e2e-kill-worker-0"))


@pytest.mark.parametrize(
    ("name", "fields", "error_type"),
    [
        ("e2e-badcfg", {"opts": ["train.epochs=2", "train.base_lr=-1"]}, "ConfigError"),
        ("e2e-nodata", {"dataPath": "/data/no-such-set"}, "DataError"),
    ],
)
async def test_a_users_mistake_fails_without_restarts(
    cluster: Cluster, claims: Path, name: str, fields: dict, error_type: str
):
    """A bad config value or a data path without a data set: the trainer says ``retryable: false``."""
    async with Kubelet(cluster.emulator, cluster.core, claims):
        await cluster.create(name, training_spec(**fields))
        await cluster.wait(lambda: cluster.phase(name) == "Failed", timeout=90)
        failed = cluster.condition(name, "Failed")
        assert failed["reason"] == "NotRetryable" and error_type in failed["message"], failed
        assert cluster.training(name)["status"].get("restarts", 0) == 0


async def test_backoff_limit_zero_and_a_failing_worker_fails(cluster: Cluster, claims: Path):
    async with Kubelet(cluster.emulator, cluster.core, claims) as kubelet:
        await cluster.create("e2e-once", training_spec(backoffLimit=0))
        await cluster.wait(lambda: cluster.phase("e2e-once") == "Running", timeout=60)
        await kubelet.kill("e2e-once-worker-1")
        await cluster.wait(lambda: cluster.phase("e2e-once") == "Failed", timeout=60)
        assert cluster.condition("e2e-once", "Failed")["reason"] == "BackoffLimitExceeded"
        assert cluster.training("e2e-once")["status"].get("restarts", 0) == 0


async def test_suspend_then_resume_continues_from_the_checkpoint(cluster: Cluster, claims: Path):
    async with Kubelet(cluster.emulator, cluster.core, claims):
        await cluster.create("e2e-pause", training_spec("train.epochs=3"))
        await wait_progress(cluster, "e2e-pause", 3)
        await cluster.patch_spec("e2e-pause", {"suspend": True})
        await cluster.wait(lambda: cluster.phase("e2e-pause") == "Suspended", timeout=60)
        await asyncio.sleep(1)
        await cluster.patch_spec("e2e-pause", {"suspend": False})
        await cluster.wait(lambda: cluster.phase("e2e-pause") in ("Succeeded", "Failed"), timeout=180)
        status = cluster.training("e2e-pause")["status"]
        assert status["phase"] == "Succeeded" and status.get("restarts", 0) == 0, json.dumps(
            status["conditions"]
        )
        # Both ranks stopped at one step boundary on SIGTERM, wrote its checkpoint within the grace
        # period, and the next gang resumed from exactly that one (worker 0's log keeps both runs).
        log = worker_log(claims, "e2e-pause-worker-0")
        stopped = re.search(r"SIGTERM: stopped at iteration (\d+), checkpoint \S*/iter_(\d+)\.pth", log)
        assert stopped is not None and stopped[1] == stopped[2], log[-3000:]
        assert re.search(rf"resume: iter_{stopped[1]}\.pth at epoch \d+, iteration {stopped[1]}\b", log), log[
            -3000:
        ]
