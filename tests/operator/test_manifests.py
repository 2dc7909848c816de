"""The pure builders: a spec in, the Service, pods and PodGroup out as the API server takes them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from solov2_operator.manifests import (
    GROUP_NAME_ANNOTATION,
    build_pod,
    build_podgroup,
    build_pods,
    build_service,
    master_addr,
)
from solov2_operator.spec import SpecError, read_spec

NPU_2x8 = {
    "image": "registry.example/solov2:npu",
    "nodes": 2,
    "devicesPerNode": 8,
    "schedulerName": "volcano",
    "gangScheduling": {"queue": "research", "priorityClassName": "high"},
    "dataVolume": {"claimName": "coco", "mountPath": "/data"},
    "checkpointVolume": {"claimName": "ckpt"},
    "opts": ["train.epochs=24"],
}


def container(pod):
    (c,) = pod["spec"]["containers"]
    return c


def env_of(pod):
    return {e["name"]: e for e in container(pod)["env"]}


def flag(args, name):
    return args[args.index(name) + 1]


def test_multi_node_npu_gang_runs_torchrun_with_its_rank_and_worker_0_as_master():
    spec = read_spec("coco", NPU_2x8)
    pods = build_pods("coco", "ml", spec)
    assert [p["metadata"]["name"] for p in pods] == ["coco-worker-0", "coco-worker-1"]
    for i, pod in enumerate(pods):
        args = container(pod)["args"]
        assert args[0] == "torchrun"
        assert flag(args, "--nnodes") == "2" and flag(args, "--node-rank") == str(i)
        assert flag(args, "--nproc-per-node") == "8"
        assert flag(args, "--master-addr") == "coco-worker-0.coco.ml.svc" == master_addr("coco", "ml")
        assert flag(args, "--master-port") == "29500"
        assert flag(args, "--rdzv-conf") == "timeout=1800"
        assert flag(args, "--shutdown-timeout") == "40" and flag(args, "--stop-timeout") == "25"
        assert flag(args, "--device") == "npu" and "--resume" in args
        assert flag(args, "--work-dir") == "/output/coco"
        assert args[-2:] == ["--opts", "train.epochs=24"]
        assert pod["spec"]["hostname"] == f"coco-worker-{i}" and pod["spec"]["subdomain"] == "coco"
        assert pod["spec"]["restartPolicy"] == "Never"
        res = container(pod)["resources"]
        assert res["requests"]["huawei.com/Ascend910"] == res["limits"]["huawei.com/Ascend910"] == "8"
        env = env_of(pod)
        assert env["HCCL_IF_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        assert env["HCCL_WHITELIST_DISABLE"]["value"] == "1"
        assert int(env["HCCL_CONNECT_TIMEOUT"]["value"]) >= 120
        assert pod["spec"]["schedulerName"] == "volcano"
        assert pod["metadata"]["annotations"][GROUP_NAME_ANNOTATION] == "coco"
        assert pod["spec"]["priorityClassName"] == "high"
        assert pod["spec"]["terminationGracePeriodSeconds"] == 180
        (spread,) = pod["spec"]["affinity"]["podAntiAffinity"][
            "preferredDuringSchedulingIgnoredDuringExecution"
        ]
        assert spread["podAffinityTerm"] == {
            "labelSelector": {
                "matchLabels": {"app.kubernetes.io/name": "solov2-training", "solov2.io/training": "coco"}
            },
            "topologyKey": "kubernetes.io/hostname",
        }
    assert pods[0]["metadata"]["labels"]["solov2.io/metrics"] == "true"
    assert "solov2.io/metrics" not in pods[1]["metadata"]["labels"]
    assert pods[1]["metadata"]["labels"]["solov2.io/worker-index"] == "1"
    group = build_podgroup("coco", "ml", spec)
    assert group["apiVersion"] == "scheduling.volcano.sh/v1beta1" and group["kind"] == "PodGroup"
    assert group["spec"] == {
        "minMember": 2,
        "queue": "research",
        "priorityClassName": "high",
        "minResources": {"huawei.com/Ascend910": "16"},
    }


def test_podgroup_asks_for_what_its_minimum_of_workers_requests():
    """Volcano admits a PodGroup to its queue only when ``minResources`` fit (queue capability, cluster
    idle): the requests of ``minAvailable`` workers, limits left out."""
    spec = read_spec(
        "coco",
        {
            **NPU_2x8,
            "nodes": 4,
            "gangScheduling": {"minAvailable": 3},
            "resources": {
                "cpu": "15500m",
                "memory": "7.5Gi",
                "limits": {"cpu": "32", "memory": "64Gi"},
                "extended": {"rdma/hca": 1},
            },
        },
    )
    assert build_podgroup("coco", "ml", spec)["spec"]["minResources"] == {
        "cpu": "46500m",
        "memory": "22.5Gi",
        "huawei.com/Ascend910": "24",
        "rdma/hca": "3",
    }
    cpu_only = read_spec("tiny", {"image": "i", "device": "cpu", "gangScheduling": {}})
    assert "minResources" not in build_podgroup("tiny", "ml", cpu_only)["spec"]
    limited = read_spec("tiny", {"image": "i", "device": "cpu", "nodes": 2, "gangScheduling": {},
                                 "resources": {"cpu": "2", "limits": {"cpu": "4", "memory": "8Gi"}}})  # fmt: skip
    assert build_podgroup("tiny", "ml", limited)["spec"]["minResources"] == {"cpu": "4", "memory": "16Gi"}


def test_volumes_and_shared_memory():
    pod = build_pod("coco", "ml", read_spec("coco", {**NPU_2x8, "shmSize": "16Gi"}), 0)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "coco", "readOnly": True}
    assert volumes["output"]["persistentVolumeClaim"] == {"claimName": "ckpt"}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    mounts = {m["name"]: m for m in container(pod)["volumeMounts"]}
    assert mounts["dshm"]["mountPath"] == "/dev/shm"
    assert mounts["data"] == {"name": "data", "mountPath": "/data", "readOnly": True}
    assert mounts["output"]["mountPath"] == "/output"
    free = {"image": "x", "dataVolume": {"volume": {"nfs": {"server": "nfs", "path": "/coco"}}}}
    pod = build_pod("coco", "ml", read_spec("coco", free), 0)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "nfs": {"server": "nfs", "path": "/coco"}}
    assert volumes["output"]["emptyDir"] == {}


def test_gpu_workers_request_nvidia_gpus_without_hccl():
    spec = read_spec("det", {"image": "x", "device": "gpu", "devicesPerNode": 4, "resources": {"cpu": 16}})
    (pod,) = build_pods("det", "ml", spec)
    assert flag(container(pod)["args"], "--device") == "cuda"
    res = container(pod)["resources"]
    assert res["limits"] == {"nvidia.com/gpu": "4"}
    assert res["requests"] == {"cpu": "16", "nvidia.com/gpu": "4"}
    assert not any(name.startswith("HCCL_") for name in env_of(pod))
    assert (
        GROUP_NAME_ANNOTATION not in pod["metadata"]["annotations"]
        and build_podgroup("det", "ml", spec) is None
    )


def test_cpu_workers_request_only_cpu_and_memory():
    spec = read_spec(
        "tiny",
        {"image": "x", "device": "cpu", "nodes": 2, "devicesPerNode": 1, "evaluate": False,
         "resources": {"cpu": 2, "memory": "4Gi"}, "loadFrom": "/w/r50.pth", "compile": True},
    )  # fmt: skip
    pods = build_pods("tiny", "default", spec)
    args = container(pods[1])["args"]
    assert flag(args, "--device") == "cpu" and "--no-eval" in args and "--compile" in args
    assert flag(args, "--load-from") == "/w/r50.pth"
    assert container(pods[1])["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"}}


def test_a_users_env_entry_wins_over_a_default():
    spec = read_spec(
        "coco",
        {**NPU_2x8, "env": [{"name": "HCCL_CONNECT_TIMEOUT", "value": "1800"}, {"name": "X", "value": "1"}]},
    )
    env = container(build_pod("coco", "ml", spec, 1))["env"]
    timeouts = [e for e in env if e["name"] == "HCCL_CONNECT_TIMEOUT"]
    assert timeouts == [{"name": "HCCL_CONNECT_TIMEOUT", "value": "1800"}]
    assert {"name": "X", "value": "1"} in env


def test_workers_meet_the_restricted_pod_security_level_unless_the_spec_relaxes_it():
    pod = build_pod("coco", "ml", read_spec("coco", NPU_2x8), 0)
    assert container(pod)["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["spec"]["automountServiceAccountToken"] is False and pod["spec"]["enableServiceLinks"] is False
    relaxed = {"runAsNonRoot": False, "capabilities": {"drop": ["ALL"], "add": ["IPC_LOCK"]}}
    pod = build_pod("coco", "ml", read_spec("coco", {**NPU_2x8, "securityContext": relaxed}), 0)
    assert container(pod)["securityContext"] == {
        "runAsNonRoot": False,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"], "add": ["IPC_LOCK"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }

    # The API server refuses allowPrivilegeEscalation false beside a privileged container or CAP_SYS_ADMIN.
    for asked in ({"privileged": True}, {"capabilities": {"add": ["SYS_ADMIN"]}}):
        pod = build_pod("coco", "ml", read_spec("coco", {**NPU_2x8, "securityContext": asked}), 0)
        assert "allowPrivilegeEscalation" not in container(pod)["securityContext"]
    asked = {"privileged": True, "allowPrivilegeEscalation": True}
    pod = build_pod("coco", "ml", read_spec("coco", {**NPU_2x8, "securityContext": asked}), 0)
    assert container(pod)["securityContext"]["allowPrivilegeEscalation"] is True


def test_pull_secrets_service_account_priority_limits_and_rendezvous_timeout_reach_the_pods():
    spec = read_spec(
        "coco",
        {**NPU_2x8, "gangScheduling": {"minAvailable": 2}, "priorityClassName": "urgent",
         "serviceAccountName": "reader", "imagePullSecrets": [{"name": "regcred"}, {"name": "mirror"}],
         "resources": {"cpu": 32, "memory": "256Gi", "limits": {"memory": "300Gi"}},
         "rendezvousTimeoutSeconds": 3600, "stopTimeoutSeconds": 300},
    )  # fmt: skip
    pod = build_pod("coco", "ml", spec, 1)
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
    assert pod["spec"]["serviceAccountName"] == "reader"
    assert "automountServiceAccountToken" not in pod["spec"]  # the account's own setting holds
    assert pod["spec"]["priorityClassName"] == "urgent"
    assert build_podgroup("coco", "ml", spec)["spec"]["priorityClassName"] == "urgent"
    assert container(pod)["resources"] == {
        "requests": {"cpu": "32", "memory": "256Gi", "huawei.com/Ascend910": "8"},
        "limits": {"memory": "300Gi", "huawei.com/Ascend910": "8"},
    }
    assert flag(container(pod)["args"], "--rdzv-conf") == "timeout=3600"
    assert "3600" in container(pod)["command"][2]  # the wait for worker 0's name has the same bound
    # A slow checkpoint store: the trainer, then torchrun, then the kubelet wait longer, in that order.
    args = container(pod)["args"]
    assert (flag(args, "--stop-timeout"), flag(args, "--shutdown-timeout")) == ("300", "315")
    assert pod["spec"]["terminationGracePeriodSeconds"] == 375


@pytest.mark.parametrize("version", ["1.29.0", "1.37.0"])  # the chart's oldest and newest Kubernetes
def test_what_the_builders_make_is_valid_kubernetes(version):
    import kubernetes_validate

    from .test_crd import ROOT, load_example

    full = {**NPU_2x8, "priorityClassName": "urgent", "gangScheduling": {"minAvailable": 1},
            "serviceAccountName": "reader", "imagePullSecrets": [{"name": "regcred"}],
            "resources": {"cpu": 32, "memory": "256Gi", "limits": {"cpu": 40, "memory": "300Gi"}},
            "securityContext": {"capabilities": {"drop": ["ALL"], "add": ["IPC_LOCK"]}},
            "podSecurityContext": {"fsGroup": 2000, "fsGroupChangePolicy": "Always", "runAsGroup": 2000},
            "tolerations": [{"key": "huawei.com/Ascend910", "operator": "Exists", "effect": "NoSchedule"}],
            "nodeSelector": {"accelerator": "huawei-Ascend910"}, "env": [{"name": "A", "value": "1"}],
            "runtimeClassName": "ascend", "podAnnotations": {"k8s.v1.cni.cncf.io/networks": "roce"},
            "volumes": [{"name": "driver", "hostPath": {"path": "/usr/local/Ascend/driver"}}],
            "volumeMounts": [{"name": "driver", "mountPath": "/usr/local/Ascend/driver", "readOnly": True}],
            }  # fmt: skip
    examples = [load_example(path) for path in sorted((ROOT / "examples").glob("*.yaml"))]
    specs = [full, *(e["spec"] for e in examples)]
    for spec in (read_spec("coco", s) for s in specs):
        for body in [*build_pods("coco", "ml", spec), build_service("coco", "ml", spec)]:
            kubernetes_validate.validate(body, version, strict=True)
    broken = build_pod("coco", "ml", read_spec("coco", full), 0)
    broken["spec"]["containers"][0]["securityContext"]["runAsNonRot"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="runAsNonRot"):
        kubernetes_validate.validate(broken, version, strict=True)


def test_extra_volumes_annotations_runtime_and_resources_reach_the_pods():
    """What an Ascend cluster without Ascend's container runtime as the default, or an RDMA network for
    NCCL, asks of the pods: the driver mounted from the host, a RuntimeClass, a Multus network and its
    device plugin's resource."""
    spec = read_spec(
        "coco",
        {**NPU_2x8, "runtimeClassName": "ascend", "podAnnotations": {"k8s.v1.cni.cncf.io/networks": "roce"},
         "volumes": [{"name": "driver", "hostPath": {"path": "/usr/local/Ascend/driver"}}],
         "volumeMounts": [{"name": "driver", "mountPath": "/usr/local/Ascend/driver", "readOnly": True}],
         "resources": {"extended": {"rdma/hca_shared_devices_a": 1}}},
    )  # fmt: skip
    pod = build_pod("coco", "ml", spec, 1, gang=3)
    assert pod["spec"]["runtimeClassName"] == "ascend"
    assert pod["metadata"]["annotations"] == {
        "k8s.v1.cni.cncf.io/networks": "roce",
        "solov2.io/nodes": "2",
        "solov2.io/gang": "3",
        "scheduling.k8s.io/group-name": "coco",
    }
    assert pod["spec"]["volumes"][-1] == {"name": "driver", "hostPath": {"path": "/usr/local/Ascend/driver"}}
    assert container(pod)["volumeMounts"][-1] == {
        "name": "driver", "mountPath": "/usr/local/Ascend/driver", "readOnly": True
    }  # fmt: skip
    res = container(pod)["resources"]
    assert res["requests"]["rdma/hca_shared_devices_a"] == res["limits"]["rdma/hca_shared_devices_a"] == "1"
    assert res["limits"]["huawei.com/Ascend910"] == "8"


def test_names_at_the_length_limit_and_beyond():
    name = "a" * 49 + "z"  # 50 characters: the longest allowed
    pods = build_pods(name, "ns", read_spec(name, {"image": "x", "nodes": 10}))
    assert max(len(p["metadata"]["name"]) for p in pods) == len(name + "-worker-9") <= 63
    with pytest.raises(SpecError, match="at most 50"):
        read_spec(name + "b", {"image": "x"})
    with pytest.raises(SpecError, match="DNS-1035"):
        read_spec("9lives", {"image": "x"})


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"image": "x", "device": "cpu", "resourceName": "huawei.com/Ascend310P"}, "resourceName"),
        ({"image": "x", "nodes": 2, "gangScheduling": {"minAvailable": 3}}, "minAvailable"),
        ({"image": "x", "env": [{"name": "A"}, {"name": "A"}]}, "unique"),
        ({"image": "x", "dataVolume": {"mountPath": "/d"}}, "exactly one"),
        ({"image": "x", "priorityClassName": "a", "gangScheduling": {"priorityClassName": "b"}}, "not both"),
        ({"image": "x", "securityContext": {"runAsNonroot": False}}, "unknown field 'runAsNonroot'"),
        ({"image": "x", "podSecurityContext": {"fsgroup": 7}}, "podSecurityContext: unknown field 'fsgroup'"),
        ({"image": "x", "volumes": [{"name": "dshm", "emptyDir": {}}]}, "dshm is taken"),
        ({"image": "x", "volumes": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"image": "x", "volumeMounts": [{"name": "driver", "mountPath": "/d"}]}, "no volume 'driver'"),
        ({"image": "x", "podAnnotations": {"solov2.io/gang": "7"}}, "solov2.io/gang is the operator's"),
        (
            {"image": "x", "resources": {"extended": {"huawei.com/Ascend910": 4}}},
            "huawei.com/Ascend910 is set by",
        ),
    ],
)
def test_specs_the_pods_cannot_be_built_from_say_why(spec, match):
    with pytest.raises(SpecError, match=match):
        read_spec("t", spec)


def test_headless_service_resolves_workers_before_they_are_ready():
    service = build_service("coco", "ml", read_spec("coco", {**NPU_2x8, "metricsPort": 9100}))
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {
        "app.kubernetes.io/name": "solov2-training",
        "solov2.io/training": "coco",
    }
    assert sorted(p["port"] for p in service["spec"]["ports"]) == [9100, 29500]


def _run_entry(tmp_path, master: str, wait: str):
    pod = build_pod("coco", "ml", read_spec("coco", {"image": "x", "device": "cpu"}), 1)
    command = container(pod)["command"]
    log = tmp_path / "termination-log"
    env = {
        **os.environ,
        "MASTER_ADDR": master,
        "SOLOV2_DNS_WAIT_SECONDS": wait,
        "SOLOV2_TERMINATION_LOG": str(log),
        "SOLOV2_SERVICE": "coco.ml",
    }
    proc = subprocess.run([*command, "echo", "started"], env=env, capture_output=True, text=True, timeout=30)
    return proc, log


def test_worker_waits_for_worker_0s_name_then_starts(tmp_path):
    proc, _ = _run_entry(tmp_path, "localhost", "4")
    assert proc.returncode == 0 and proc.stdout.strip() == "started"


def _can_run_as_pid_1() -> bool:
    try:
        return subprocess.run(["unshare", "-fp", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.skipif(not _can_run_as_pid_1(), reason="needs unshare -fp (a PID namespace) to run as PID 1")
def test_a_waiting_worker_stops_at_once_on_sigterm_as_pid_1(tmp_path):
    """In the container the wait is PID 1, which ignores signals it has no handler for: without one a
    suspend or a restart would wait out the whole grace period for a worker still waiting for worker 0."""
    import signal
    import time

    pod = build_pod("coco", "ml", read_spec("coco", {"image": "x", "device": "cpu"}), 1)
    env = {**os.environ, "MASTER_ADDR": "coco-worker-0.coco.ml.svc.invalid", "SOLOV2_DNS_WAIT_SECONDS": "60",
           "SOLOV2_TERMINATION_LOG": str(tmp_path / "log"), "SOLOV2_SERVICE": "coco.ml"}  # fmt: skip
    proc = subprocess.Popen(["unshare", "-fp", *container(pod)["command"], "echo", "started"], env=env)
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        deadline = time.monotonic() + 10
        while not children.read_text().split() and time.monotonic() < deadline:
            time.sleep(0.05)
        (pid_1,) = map(int, children.read_text().split())
        time.sleep(1)  # inside the wait loop
        sent = time.monotonic()
        os.kill(pid_1, signal.SIGTERM)
        assert proc.wait(timeout=10) == 143 and time.monotonic() - sent < 5
    finally:
        proc.kill()
        proc.wait()


def test_worker_gives_up_on_an_unresolvable_master_with_a_clear_message(tmp_path):
    proc, log = _run_entry(tmp_path, "coco-worker-0.coco.ml.svc.invalid", "2")
    assert proc.returncode == 1 and "started" not in proc.stdout
    assert "did not resolve within 2s" in proc.stderr and "coco.ml" in proc.stderr
    import json

    message = json.loads(log.read_text())
    assert message["error_type"] == "RendezvousTimeout" and message["retryable"] is True


def test_workers_get_the_trainer_images_group_unless_the_spec_replaces_the_pod_security_context():
    import re
    from pathlib import Path

    from solov2_operator.manifests import TRAINER_GROUP

    pod = build_pod("coco", "ml", read_spec("coco", NPU_2x8), 0)
    assert pod["spec"]["securityContext"] == {
        "fsGroup": TRAINER_GROUP,
        "fsGroupChangePolicy": "OnRootMismatch",
    }
    # OpenShift's restricted-v2 refuses an fsGroup outside the namespace's range: {} leaves it to the SCC.
    pod = build_pod("coco", "ml", read_spec("coco", {**NPU_2x8, "podSecurityContext": {}}), 0)
    assert "securityContext" not in pod["spec"]
    asked = {"fsGroup": 1000650000, "supplementalGroups": [5555]}
    pod = build_pod("coco", "ml", read_spec("coco", {**NPU_2x8, "podSecurityContext": asked}), 0)
    assert pod["spec"]["securityContext"] == asked
    dockerfile = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    trainer_stage = dockerfile[dockerfile.rindex("AS trainer") :]
    (user,) = re.findall(r"^USER (\d+):(\d+)$", trainer_stage, flags=re.M)
    assert int(user[1]) == TRAINER_GROUP
