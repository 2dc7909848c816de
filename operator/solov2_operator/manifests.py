"""Pure builders: a SOLOv2Training (name, namespace, spec) in, its children out as plain dicts.

The Service and the pods are built with the official client's typed models (``V1Pod``, ...) and
serialised as the API server expects them; the Volcano PodGroup has no typed model and is a dict.
Nothing here talks to a cluster: owner references are added by the handlers (``kopf.adopt``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from kubernetes.client import (
    ApiClient,
    V1Container,
    V1ContainerPort,
    V1EmptyDirVolumeSource,
    V1EnvVar,
    V1EnvVarSource,
    V1LocalObjectReference,
    V1ObjectFieldSelector,
    V1ObjectMeta,
    V1PersistentVolumeClaimVolumeSource,
    V1Pod,
    V1PodSpec,
    V1ResourceRequirements,
    V1Service,
    V1ServicePort,
    V1ServiceSpec,
    V1Toleration,
    V1Volume,
    V1VolumeMount,
)

from solov2_contract import TERMINATION_LOG, TrainFlags

from .spec import TrainingSpec

__all__ = [
    "GANG_ANNOTATION",
    "GANG_SIZE_ANNOTATION",
    "GRACE_PERIOD_SECONDS",
    "GROUP_NAME_ANNOTATION",
    "LABEL_INDEX",
    "LABEL_METRICS",
    "LABEL_NAME",
    "LABEL_TRAINING",
    "SECURITY_CONTEXT",
    "build_pod",
    "build_podgroup",
    "build_pods",
    "build_service",
    "master_addr",
    "pod_labels",
    "selector",
    "work_dir",
    "worker_name",
]

APP_NAME = "solov2-training"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_TRAINING = "solov2.io/training"
LABEL_INDEX = "solov2.io/worker-index"
LABEL_METRICS = "solov2.io/metrics"
GROUP_NAME_ANNOTATION = "scheduling.k8s.io/group-name"
GANG_SIZE_ANNOTATION = "solov2.io/nodes"
"""On every worker: the size of its gang (``spec.nodes`` when the gang was created). A running gang keeps
its size when ``nodes`` changes; the next gang takes the new one."""
GANG_ANNOTATION = "solov2.io/gang"
"""On every worker: the training's ``status.restarts`` when its gang was created. While the training is
``Restarting`` (``restarts`` already one more), a pod with another number is the failed gang's."""
PODGROUP_API = ("scheduling.volcano.sh", "v1beta1", "podgroups")
TRAINER_GROUP = 1000
"""The group the trainer image runs as (the Dockerfile's ``USER 1000:1000``): the workers' ``fsGroup``, so
that a freshly provisioned checkpoint volume (root's, mode 0755) is writable to it."""
GRACE_PERIOD_SECONDS = 180
"""Least time between SIGTERM and SIGKILL: the trainer saves a checkpoint on SIGTERM before it exits."""
SHUTDOWN_MARGIN_SECONDS = 15
"""How much longer torchrun waits for its processes (``--shutdown-timeout``) than the trainer gives
itself to stop (``--stop-timeout``); the grace period adds another minute on top."""
HCCL_CONNECT_TIMEOUT = "600"
CONTAINER = "trainer"
SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
"""The trainer container's securityContext unless ``spec.securityContext`` replaces a field: what the
``restricted`` Pod Security level asks for (the trainer image runs as 1000:1000 and needs no privilege)."""
POD_SECURITY_CONTEXT: dict[str, Any] = {"fsGroup": TRAINER_GROUP, "fsGroupChangePolicy": "OnRootMismatch"}
"""The workers' pod securityContext unless ``spec.podSecurityContext`` replaces it as a whole. OnRootMismatch:
the kubelet changes ownership only where the volume's root is not the group's already (a large checkpoint
volume is not walked at every start; read-only ones are skipped)."""

# Waits (bounded) until worker 0's DNS name resolves, then runs the command given as arguments. On
# timeout it writes a retryable failure termination message that names the Service to check. It is
# the container's PID 1 while it waits, which the kernel shields from signals it does not handle: the
# trap lets SIGTERM (a suspend, a deleted gang) end it at once instead of after the grace period.
_WAIT_FOR_MASTER = """\
trap 'exit 143' TERM; trap 'exit 130' INT
limit="${SOLOV2_DNS_WAIT_SECONDS:-%(wait)d}"; waited=0
until python3 -c 'import socket, sys; socket.getaddrinfo(sys.argv[1], None)' "$MASTER_ADDR" 2>/dev/null; do
  if [ "$waited" -ge "$limit" ]; then
    msg="worker 0's name $MASTER_ADDR did not resolve within ${limit}s: check the headless Service $SOLOV2_SERVICE"
    echo "solov2: $msg" >&2
    printf '{"error": "%%s", "error_type": "RendezvousTimeout", "retryable": true}' "$msg" \
      > "${SOLOV2_TERMINATION_LOG:-%(log)s}"
    exit 1
  fi
  sleep 2 & wait $!; waited=$((waited + 2))
done
exec "$@"
"""

_API = ApiClient()


def _plain(model: Any) -> dict[str, Any]:
    return _API.sanitize_for_serialization(model)


def worker_name(name: str, index: int) -> str:
    """Pod name (and hostname) of worker ``index``."""
    return f"{name}-worker-{index}"


def master_addr(name: str, namespace: str) -> str:
    """Worker 0's DNS name through the headless Service."""
    return f"{worker_name(name, 0)}.{name}.{namespace}.svc"


def work_dir(name: str, spec: TrainingSpec) -> str:
    """The trainer's ``--work-dir``: ``<checkpointVolume.mountPath>/<name>``, else ``/output/<name>``."""
    mount = (spec.checkpoint_volume or {}).get("mountPath", "/output")
    return f"{mount.rstrip('/')}/{name}"


def selector(name: str) -> dict[str, str]:
    """Labels every worker of training ``name`` carries."""
    return {LABEL_NAME: APP_NAME, LABEL_TRAINING: name}


def pod_labels(name: str, index: int) -> dict[str, str]:
    labels = {**selector(name), LABEL_INDEX: str(index)}
    if index == 0:
        labels[LABEL_METRICS] = "true"
    return labels


def build_service(name: str, namespace: str, spec: TrainingSpec) -> dict[str, Any]:
    """The headless Service that gives every worker a DNS name, ready or not."""
    service = V1Service(
        api_version="v1",
        kind="Service",
        metadata=V1ObjectMeta(name=name, namespace=namespace, labels=selector(name)),
        spec=V1ServiceSpec(
            cluster_ip="None",
            publish_not_ready_addresses=True,
            selector=selector(name),
            ports=[
                V1ServicePort(name="rendezvous", port=spec.master_port, target_port=spec.master_port),
                V1ServicePort(name="metrics", port=spec.metrics_port, target_port=spec.metrics_port),
            ],
        ),
    )
    return _plain(service)


def trainer_args(name: str, namespace: str, spec: TrainingSpec, index: int) -> list[str]:
    """``torchrun ... -m solov2.cli train ...`` for worker ``index``."""
    args = [
        "torchrun",
        "--nnodes", str(spec.nodes),
        "--node-rank", str(index),
        "--nproc-per-node", str(spec.devices_per_node),
        "--master-addr", master_addr(name, namespace),
        "--master-port", str(spec.master_port),
        "--rdzv-conf", f"timeout={spec.rendezvous_timeout_seconds}",
        "--shutdown-timeout", str(spec.stop_timeout_seconds + SHUTDOWN_MARGIN_SECONDS),
        "-m", TrainFlags.MODULE, TrainFlags.COMMAND,
        TrainFlags.CONFIG, spec.config,
        TrainFlags.DATA_PATH, spec.data_path,
        TrainFlags.WORK_DIR, work_dir(name, spec),
        TrainFlags.DEVICE, spec.trainer_device,
        TrainFlags.RESUME,
        TrainFlags.METRICS_PORT, str(spec.metrics_port),
        TrainFlags.TERMINATION_LOG, TERMINATION_LOG,
        TrainFlags.STOP_TIMEOUT, str(spec.stop_timeout_seconds),
    ]  # fmt: skip
    if spec.compile:
        args.append(TrainFlags.COMPILE)
    if not spec.evaluate:
        args.append(TrainFlags.NO_EVAL)
    if spec.load_from:
        args += [TrainFlags.LOAD_FROM, spec.load_from]
    if spec.opts:
        args += [TrainFlags.OPTS, *spec.opts]
    return args


def _env(name: str, namespace: str, spec: TrainingSpec) -> list[dict[str, Any]]:
    """Defaults first; a user's entry of the same name replaces the default in place."""
    defaults: list[V1EnvVar] = [
        V1EnvVar(name="MASTER_ADDR", value=master_addr(name, namespace)),
        V1EnvVar(name="SOLOV2_SERVICE", value=f"{name}.{namespace}"),
    ]
    if spec.device == "npu":
        pod_ip = V1EnvVarSource(field_ref=V1ObjectFieldSelector(field_path="status.podIP"))
        defaults += [
            V1EnvVar(name="HCCL_IF_IP", value_from=pod_ip),
            V1EnvVar(name="HCCL_CONNECT_TIMEOUT", value=HCCL_CONNECT_TIMEOUT),
            V1EnvVar(name="HCCL_WHITELIST_DISABLE", value="1"),
        ]
    merged: dict[str, dict[str, Any]] = {e.name: _plain(e) for e in defaults}
    for entry in spec.env:
        merged[entry["name"]] = dict(entry)
    return list(merged.values())


def _volumes(spec: TrainingSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if spec.data_volume is not None:
        data = dict(spec.data_volume)
        if "claimName" in data:
            source = V1PersistentVolumeClaimVolumeSource(
                claim_name=data["claimName"], read_only=data.get("readOnly", True)
            )
            volumes.append(_plain(V1Volume(name="data", persistent_volume_claim=source)))
        else:
            volumes.append({"name": "data", **dict(data["volume"])})
        mount = V1VolumeMount(
            name="data", mount_path=data.get("mountPath", "/data"), read_only=data.get("readOnly", True)
        )
        mounts.append(_plain(mount))
    checkpoints = spec.checkpoint_volume or {}
    if checkpoints:
        claim = V1PersistentVolumeClaimVolumeSource(claim_name=checkpoints["claimName"])
        volumes.append(_plain(V1Volume(name="output", persistent_volume_claim=claim)))
    else:
        volumes.append(_plain(V1Volume(name="output", empty_dir=V1EmptyDirVolumeSource())))
    mounts.append(_plain(V1VolumeMount(name="output", mount_path=checkpoints.get("mountPath", "/output"))))
    shm = V1EmptyDirVolumeSource(medium="Memory", size_limit=spec.shm_size)
    volumes.append(_plain(V1Volume(name="dshm", empty_dir=shm)))
    mounts.append(_plain(V1VolumeMount(name="dshm", mount_path="/dev/shm")))
    volumes += [dict(v) for v in spec.volumes]
    mounts += [dict(m) for m in spec.volume_mounts]
    return volumes, mounts


def _resources(spec: TrainingSpec) -> V1ResourceRequirements:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if spec.cpu is not None:
        requests["cpu"] = spec.cpu
    if spec.memory is not None:
        requests["memory"] = spec.memory
    if spec.cpu_limit is not None:
        limits["cpu"] = spec.cpu_limit
    if spec.memory_limit is not None:
        limits["memory"] = spec.memory_limit
    if spec.device_resource is not None:
        requests[spec.device_resource] = limits[spec.device_resource] = str(spec.devices_per_node)
    for resource, amount in spec.extended_resources.items():
        requests[resource] = limits[resource] = amount
    return V1ResourceRequirements(requests=requests or None, limits=limits or None)


def security_context(spec: TrainingSpec) -> dict[str, Any]:
    """:data:`SECURITY_CONTEXT` with ``spec.securityContext``'s fields in place of its own. A privileged
    container, or one that adds CAP_SYS_ADMIN, loses the default ``allowPrivilegeEscalation: false``
    (the API server refuses the two together) unless the spec sets it."""
    asked = dict(spec.security_context)
    added = {str(c).upper().removeprefix("CAP_") for c in (asked.get("capabilities") or {}).get("add") or ()}
    defaults = dict(SECURITY_CONTEXT)
    if asked.get("privileged") or "SYS_ADMIN" in added:
        del defaults["allowPrivilegeEscalation"]
    return {**defaults, **asked}


def grace_period_seconds(spec: TrainingSpec) -> int:
    """The workers' ``terminationGracePeriodSeconds``: torchrun's shutdown timeout and a minute more, at
    least :data:`GRACE_PERIOD_SECONDS`."""
    return max(GRACE_PERIOD_SECONDS, spec.stop_timeout_seconds + SHUTDOWN_MARGIN_SECONDS + 60)


def build_pod(name: str, namespace: str, spec: TrainingSpec, index: int, gang: int = 0) -> dict[str, Any]:
    """Worker ``index`` of gang number ``gang`` (the training's ``status.restarts``): one container that
    waits for worker 0's name, then runs torchrun."""
    volumes, mounts = _volumes(spec)
    script = _WAIT_FOR_MASTER % {"wait": spec.rendezvous_timeout_seconds, "log": TERMINATION_LOG}
    container = V1Container(
        name=CONTAINER,
        image=spec.image,
        image_pull_policy=spec.image_pull_policy,
        command=["sh", "-c", script, "solov2-worker"],
        args=trainer_args(name, namespace, spec, index),
        ports=[
            V1ContainerPort(name="rendezvous", container_port=spec.master_port),
            V1ContainerPort(name="metrics", container_port=spec.metrics_port),
        ],
        resources=_resources(spec),
        termination_message_path=TERMINATION_LOG,
        termination_message_policy="FallbackToLogsOnError",
    )
    annotations = {**spec.pod_annotations, GANG_SIZE_ANNOTATION: str(spec.nodes), GANG_ANNOTATION: str(gang)}
    if spec.gang is not None:
        annotations[GROUP_NAME_ANNOTATION] = name
    pod_spec = V1PodSpec(
        containers=[container],
        restart_policy="Never",
        hostname=worker_name(name, index),
        subdomain=name,
        termination_grace_period_seconds=grace_period_seconds(spec),
        scheduler_name=spec.scheduler_name,
        priority_class_name=spec.pod_priority_class,
        service_account_name=spec.service_account_name,
        # The trainer never calls the API server: no token unless a ServiceAccount was asked for.
        automount_service_account_token=None if spec.service_account_name else False,
        image_pull_secrets=[V1LocalObjectReference(name=n) for n in spec.image_pull_secrets] or None,
        enable_service_links=False,
        runtime_class_name=spec.runtime_class_name,
        node_selector=dict(spec.node_selector) or None,
        tolerations=[V1Toleration(**_snake(t)) for t in spec.tolerations] or None,
    )
    pod = V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=V1ObjectMeta(
            name=worker_name(name, index),
            namespace=namespace,
            labels=pod_labels(name, index),
            annotations=annotations,
        ),
        spec=pod_spec,
    )
    body = _plain(pod)
    body["spec"]["volumes"] = volumes
    body["spec"]["containers"][0]["volumeMounts"] = mounts
    body["spec"]["containers"][0]["env"] = _env(name, namespace, spec)
    body["spec"]["containers"][0]["securityContext"] = security_context(spec)
    pod_security = POD_SECURITY_CONTEXT if spec.pod_security_context is None else spec.pod_security_context
    if pod_security:
        body["spec"]["securityContext"] = dict(pod_security)
    body["spec"]["affinity"] = _spread(name)
    return body


def _spread(name: str) -> dict[str, Any]:
    """One worker per node where the cluster allows it: a preference, not a rule, so that a gang of
    partial-node workers (or a one-node test cluster) still schedules."""
    term = {"labelSelector": {"matchLabels": selector(name)}, "topologyKey": "kubernetes.io/hostname"}
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": term}]
        }
    }


def build_pods(name: str, namespace: str, spec: TrainingSpec, gang: int = 0) -> list[dict[str, Any]]:
    """All workers of gang number ``gang``, worker 0 first."""
    return [build_pod(name, namespace, spec, i, gang) for i in range(spec.nodes)]


def build_podgroup(name: str, namespace: str, spec: TrainingSpec) -> dict[str, Any] | None:
    """Volcano's PodGroup for gang scheduling, or None without ``gangScheduling``."""
    if spec.gang is None:
        return None
    group, version, _ = PODGROUP_API
    podgroup_spec: dict[str, Any] = {"minMember": spec.min_available}
    resources = _resources(spec)
    # A limit without a request is also the request (the API server's defaulting).
    requests = {**(resources.limits or {}), **(resources.requests or {})}
    if requests:
        podgroup_spec["minResources"] = {r: _times(q, spec.min_available) for r, q in requests.items()}
    if spec.gang.get("queue"):
        podgroup_spec["queue"] = spec.gang["queue"]
    if spec.pod_priority_class:
        podgroup_spec["priorityClassName"] = spec.pod_priority_class
    return {
        "apiVersion": f"{group}/{version}",
        "kind": "PodGroup",
        "metadata": {"name": name, "namespace": namespace, "labels": selector(name)},
        "spec": podgroup_spec,
    }


_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)$")


def _times(quantity: str, count: int) -> str:
    """A Kubernetes quantity ``count`` times over, in its own unit: ``_times("7.5Gi", 2) == "15Gi"``."""
    match = _QUANTITY.match(quantity)
    if match is None:  # the CRD's pattern admits only quantities
        raise ValueError(f"not a quantity: {quantity!r}")
    number, unit = match.groups()
    total = f"{Decimal(number) * count:f}"
    return (total.rstrip("0").rstrip(".") if "." in total else total) + unit


def _snake(camel: Mapping[str, Any]) -> dict[str, Any]:
    """``{"tolerationSeconds": 1}`` -> ``{"toleration_seconds": 1}`` for the typed models."""
    out = {}
    for key, value in camel.items():
        out["".join("_" + c.lower() if c.isupper() else c for c in key)] = value
    return out
