"""A SOLOv2Training's spec, read into a typed value with docs/api.md's defaults.

The API server has already checked types and the CRD's CEL rules; :func:`read_spec` checks what a
schema cannot (a name that is too long for the pods, duplicate env names, ...) and raises
:class:`SpecError`, which ends the training ``Failed`` with reason ``InvalidSpec``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import V1PodSecurityContext, V1SecurityContext

from solov2_contract import DEFAULT_MASTER_PORT, DEFAULT_METRICS_PORT

__all__ = ["DEFAULT_RESOURCE_NAMES", "MAX_NAME_LENGTH", "SpecError", "TrainingSpec", "read_spec"]

MAX_NAME_LENGTH = 50
"""Longest resource name: ``<name>-worker-<i>`` must stay a 63-character DNS label."""
DEFAULT_RESOURCE_NAMES = {"npu": "huawei.com/Ascend910", "gpu": "nvidia.com/gpu"}
TRAINER_DEVICES = {"npu": "npu", "gpu": "cuda", "cpu": "cpu"}
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_SECURITY_CONTEXT_FIELDS = frozenset(V1SecurityContext.attribute_map.values())
_POD_SECURITY_CONTEXT_FIELDS = frozenset(V1PodSecurityContext.attribute_map.values())
OPERATOR_VOLUMES = frozenset({"data", "output", "dshm"})
"""Names of the volumes the operator adds to every worker (spec.volumes may not take them)."""


class SpecError(ValueError):
    """The spec passed the API server's validation but no pod can be built from it."""


@dataclass(frozen=True)
class TrainingSpec:
    """``spec`` of a SOLOv2Training with every default applied (field names as in docs/api.md)."""

    image: str
    image_pull_policy: str | None = None
    config: str = "solov2_r50_fpn_1x_coco"
    opts: tuple[str, ...] = ()
    load_from: str | None = None
    data_path: str = "/data"
    data_volume: Mapping[str, Any] | None = None
    checkpoint_volume: Mapping[str, Any] | None = None
    device: str = "npu"
    resource_name: str | None = None
    nodes: int = 1
    devices_per_node: int = 8
    cpu: str | None = None
    memory: str | None = None
    cpu_limit: str | None = None
    memory_limit: str | None = None
    shm_size: str = "8Gi"
    compile: bool = False
    evaluate: bool = True
    backoff_limit: int = 3
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = None
    suspend: bool = False
    scheduler_name: str | None = None
    gang: Mapping[str, Any] | None = None
    priority_class_name: str | None = None
    service_account_name: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    security_context: Mapping[str, Any] = field(default_factory=dict)
    pod_security_context: Mapping[str, Any] | None = None
    rendezvous_timeout_seconds: int = 1800
    runtime_class_name: str | None = None
    pod_annotations: Mapping[str, str] = field(default_factory=dict)
    extended_resources: Mapping[str, str] = field(default_factory=dict)
    volumes: tuple[Mapping[str, Any], ...] = ()
    volume_mounts: tuple[Mapping[str, Any], ...] = ()
    stop_timeout_seconds: int = 25
    master_port: int = DEFAULT_MASTER_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    env: tuple[Mapping[str, Any], ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()

    @property
    def trainer_device(self) -> str:
        """The trainer's ``--device``: ``npu``, ``cuda`` or ``cpu``."""
        return TRAINER_DEVICES[self.device]

    @property
    def device_resource(self) -> str | None:
        """The device plugin's resource each worker requests (None on CPUs)."""
        if self.device == "cpu":
            return None
        return self.resource_name or DEFAULT_RESOURCE_NAMES[self.device]

    @property
    def pod_priority_class(self) -> str | None:
        """The workers' PriorityClass: ``priorityClassName``, or ``gangScheduling``'s."""
        return self.priority_class_name or (self.gang or {}).get("priorityClassName")

    @property
    def min_available(self) -> int:
        """PodGroup ``minMember``."""
        return int((self.gang or {}).get("minAvailable", self.nodes))


def _quantity(value: Any) -> str | None:
    return None if value is None else str(value)


def read_spec(name: str, spec: Mapping[str, Any]) -> TrainingSpec:
    """Read and check a resource's ``spec`` (``name`` is ``metadata.name``).

    Raises:
        SpecError: the spec cannot be run; the message says which field and why.
    """
    if len(name) > MAX_NAME_LENGTH or not _DNS_1035.match(name):
        raise SpecError(
            f"metadata.name {name!r} must be a DNS-1035 label of at most {MAX_NAME_LENGTH} characters "
            "(it names the Service and the pods <name>-worker-<i>)"
        )
    if not spec.get("image"):
        raise SpecError("spec.image is required")
    device = spec.get("device", "npu")
    if device not in TRAINER_DEVICES:
        raise SpecError(f"spec.device {device!r} must be one of npu, gpu, cpu")
    if device == "cpu" and spec.get("resourceName"):
        raise SpecError("spec.resourceName is not allowed with device cpu")
    nodes = int(spec.get("nodes", 1))
    devices = int(spec.get("devicesPerNode", 8))
    if nodes < 1 or not 1 <= devices <= 16:
        raise SpecError("spec.nodes must be >= 1 and spec.devicesPerNode in 1..16")
    gang = spec.get("gangScheduling")
    if gang is not None and not 1 <= int(gang.get("minAvailable", nodes)) <= nodes:
        raise SpecError(f"spec.gangScheduling.minAvailable must be in 1..nodes ({nodes})")
    data_volume = spec.get("dataVolume")
    if data_volume is not None and ("claimName" in data_volume) == ("volume" in data_volume):
        raise SpecError("spec.dataVolume must set exactly one of claimName and volume")
    env = tuple(spec.get("env") or ())
    names = [e.get("name") for e in env]
    if len(set(names)) != len(names) or not all(names):
        raise SpecError("spec.env entries need unique, non-empty names")
    if spec.get("checkpointVolume") is not None and not spec["checkpointVolume"].get("claimName"):
        raise SpecError("spec.checkpointVolume.claimName is required in the block")
    for key, kind, known in (
        ("securityContext", "a container's", _SECURITY_CONTEXT_FIELDS),
        ("podSecurityContext", "a pod's", _POD_SECURITY_CONTEXT_FIELDS),
    ):
        unknown = sorted(set(spec.get(key) or {}) - known)
        if unknown:
            raise SpecError(
                f"spec.{key}: unknown field {', '.join(map(repr, unknown))} ({kind} securityContext "
                f"has {', '.join(sorted(known))})"
            )
    volumes = tuple(spec.get("volumes") or ())
    volume_names = [v.get("name") for v in volumes]
    taken = sorted(set(volume_names) & OPERATOR_VOLUMES)
    if taken or len(set(volume_names)) != len(volume_names):
        raise SpecError(
            f"spec.volumes: names must be unique and not {', '.join(sorted(OPERATOR_VOLUMES))} (the operator's)"
            + (f"; {', '.join(taken)} is taken" if taken else "")
        )
    mounts = tuple(spec.get("volumeMounts") or ())
    unknown_mounts = sorted({m.get("name") for m in mounts} - set(volume_names))
    if unknown_mounts:
        raise SpecError(
            f"spec.volumeMounts: no volume {', '.join(map(repr, unknown_mounts))} in spec.volumes"
        )
    annotations = dict(spec.get("podAnnotations") or {})
    reserved = sorted(
        k for k in annotations if k.startswith("solov2.io/") or k == "scheduling.k8s.io/group-name"
    )
    if reserved:
        raise SpecError(f"spec.podAnnotations: {', '.join(reserved)} is the operator's to set")
    if spec.get("priorityClassName") and (gang or {}).get("priorityClassName"):
        raise SpecError("set spec.priorityClassName or spec.gangScheduling.priorityClassName, not both")
    resources = spec.get("resources") or {}
    limits = resources.get("limits") or {}
    extended = {str(k): str(v) for k, v in (resources.get("extended") or {}).items()}
    clashing = sorted(
        set(extended) & {"cpu", "memory", spec.get("resourceName") or DEFAULT_RESOURCE_NAMES.get(device)}
    )
    if clashing:
        raise SpecError(f"spec.resources.extended: {', '.join(clashing)} is set by other fields")
    return TrainingSpec(
        image=spec["image"],
        image_pull_policy=spec.get("imagePullPolicy"),
        config=spec.get("config", TrainingSpec.config),
        opts=tuple(str(o) for o in spec.get("opts") or ()),
        load_from=spec.get("loadFrom"),
        data_path=spec.get("dataPath", "/data"),
        data_volume=data_volume,
        checkpoint_volume=spec.get("checkpointVolume"),
        device=device,
        resource_name=spec.get("resourceName"),
        nodes=nodes,
        devices_per_node=devices,
        cpu=_quantity(resources.get("cpu")),
        memory=_quantity(resources.get("memory")),
        cpu_limit=_quantity(limits.get("cpu")),
        memory_limit=_quantity(limits.get("memory")),
        shm_size=str(spec.get("shmSize", "8Gi")),
        compile=bool(spec.get("compile", False)),
        evaluate=bool(spec.get("evaluate", True)),
        backoff_limit=int(spec.get("backoffLimit", 3)),
        active_deadline_seconds=spec.get("activeDeadlineSeconds"),
        ttl_seconds_after_finished=spec.get("ttlSecondsAfterFinished"),
        suspend=bool(spec.get("suspend", False)),
        scheduler_name=spec.get("schedulerName"),
        gang=gang,
        priority_class_name=spec.get("priorityClassName"),
        service_account_name=spec.get("serviceAccountName"),
        image_pull_secrets=tuple(str(secret["name"]) for secret in spec.get("imagePullSecrets") or ()),
        security_context=dict(spec.get("securityContext") or {}),
        pod_security_context=spec.get("podSecurityContext"),
        rendezvous_timeout_seconds=int(
            spec.get("rendezvousTimeoutSeconds", TrainingSpec.rendezvous_timeout_seconds)
        ),
        stop_timeout_seconds=int(spec.get("stopTimeoutSeconds", TrainingSpec.stop_timeout_seconds)),
        runtime_class_name=spec.get("runtimeClassName"),
        pod_annotations=annotations,
        extended_resources=extended,
        volumes=volumes,
        volume_mounts=mounts,
        master_port=int(spec.get("masterPort", DEFAULT_MASTER_PORT)),
        metrics_port=int(spec.get("metricsPort", DEFAULT_METRICS_PORT)),
        env=env,
        node_selector=dict(spec.get("nodeSelector") or {}),
        tolerations=tuple(spec.get("tolerations") or ()),
    )
