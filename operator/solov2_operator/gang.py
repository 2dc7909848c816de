"""The gang's state from its pods, and what to do next: a pure decision on plain dicts.

:func:`plan` reads a SOLOv2Training and its worker pods and returns a :class:`Plan`: the status to
write, the children to create or delete, and the events to post. The handlers carry it out.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .manifests import LABEL_INDEX, build_podgroup, build_pods, build_service, worker_name
from .spec import SpecError, TrainingSpec, read_spec
from .status import Condition, Phase, Reason, is_true, now_iso, parse_time, set_condition
from .trainer_output import Failure, parse_failure, parse_results, terminated_state

__all__ = ["SUSPENDED_SECONDS_ANNOTATION", "Plan", "WorkerFailure", "invalid", "plan"]

SUSPENDED_SECONDS_ANNOTATION = "solov2.io/suspended-seconds"
"""Seconds the training spent suspended so far (excluded from ``activeDeadlineSeconds``)."""


@dataclass(frozen=True)
class WorkerFailure:
    pod: str
    exit_code: int | None
    reason: str
    failure: Failure | None
    finished_at: str | None = None

    def describe(self) -> str:
        text = f"pod {self.pod}"
        if self.exit_code is not None:
            text += f" exited with code {self.exit_code}"
        if self.reason:
            text += f" ({self.reason})"
        if self.failure is not None:
            kind = f"{self.failure.error_type}: " if self.failure.error_type else ""
            text += f": {kind}{self.failure.error}"
        return text


@dataclass
class Plan:
    """What one reconciliation decided."""

    status: dict[str, Any] = field(default_factory=dict)
    """Merge patch of ``status`` (None values remove keys)."""
    annotations: dict[str, str] = field(default_factory=dict)
    create: list[dict[str, Any]] = field(default_factory=list)
    """Children to create (Service, PodGroup, pods), in this order; existing ones are kept."""
    delete_pods: list[str] = field(default_factory=list)
    delete_training: bool = False
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """(type ``Normal``/``Warning``, reason, message)."""
    read_progress_from: str | None = None
    """Pod IP of worker 0 while it runs: read its metrics."""
    spec: TrainingSpec | None = None


def _index(pod: Mapping[str, Any]) -> int | None:
    value = ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_INDEX)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _deleting(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def _phase(pod: Mapping[str, Any]) -> str:
    return (pod.get("status") or {}).get("phase") or "Pending"


def _pod_condition(pod: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    """The pod's condition of ``type_`` (``Ready``, ``PodScheduled``, ``DisruptionTarget``), {} if none."""
    conditions = (pod.get("status") or {}).get("conditions") or ()
    return next((c for c in conditions if c.get("type") == type_), {})


def _ready(pod: Mapping[str, Any]) -> bool:
    return _pod_condition(pod, "Ready").get("status") == "True"


def _failure(pod: Mapping[str, Any]) -> WorkerFailure | None:
    name = (pod.get("metadata") or {}).get("name", "?")
    terminated = terminated_state(pod)
    if terminated is not None and terminated.get("exitCode", 0) != 0:
        return WorkerFailure(
            pod=name,
            exit_code=terminated.get("exitCode"),
            reason=terminated.get("reason") or "",
            failure=parse_failure(terminated.get("message")),
            finished_at=terminated.get("finishedAt"),
        )
    if _phase(pod) == "Failed":
        return WorkerFailure(name, None, (pod.get("status") or {}).get("reason") or "Failed", None)
    return None


def _disruption(pod: Mapping[str, Any]) -> str | None:
    """Why the cluster took this pod away, if it did: Kubernetes sets the ``DisruptionTarget``
    condition on a pod it preempts, evicts (``kubectl drain``, node pressure) or loses with its node."""
    cond = _pod_condition(pod, "DisruptionTarget")
    if cond.get("status") != "True":
        return None
    name = (pod.get("metadata") or {}).get("name", "?")
    details = ": ".join(part for part in (cond.get("reason"), cond.get("message")) if part)
    return f"pod {name} was disrupted ({details or 'DisruptionTarget'})"


_STARTING = frozenset({"ContainerCreating", "PodInitializing"})
"""Waiting reasons of a container that is on its way: nothing to report."""


def _why_waiting(pod: Mapping[str, Any], limit: int = 240) -> str | None:
    """Why a pod that does not run yet waits, as the kubelet or the scheduler says it (an image that
    cannot be pulled, a missing Secret, no node with enough devices), for the ``Running`` condition."""
    status = pod.get("status") or {}
    for container in (*(status.get("initContainerStatuses") or ()), *(status.get("containerStatuses") or ())):
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") and waiting["reason"] not in _STARTING:
            why = f"{waiting['reason']}: {waiting.get('message') or ''}"
            break
    else:
        scheduled = _pod_condition(pod, "PodScheduled")
        if scheduled.get("status") != "False":
            return None
        why = f"{scheduled.get('reason') or 'NotScheduled'}: {scheduled.get('message') or ''}"
    why = why.rstrip(": ")
    return why if len(why) <= limit else why[: limit - 3] + "..."


def _succeeded(pod: Mapping[str, Any]) -> bool:
    terminated = terminated_state(pod)
    return _phase(pod) == "Succeeded" or (terminated is not None and terminated.get("exitCode") == 0)


class _Writer:
    """Accumulates status changes over the current status."""

    def __init__(self, status: Mapping[str, Any], generation: int | None, now: str) -> None:
        self.old = dict(status)
        self.patch: dict[str, Any] = {}
        self.conditions = [dict(c) for c in status.get("conditions") or ()]
        self.generation = generation
        self.now = now
        self.events: list[tuple[str, str, str]] = []

    def get(self, key: str, default: Any = None) -> Any:
        return self.patch.get(key, self.old.get(key, default))

    def cond(self, type_: str, value: bool, reason: str, message: str = "") -> None:
        self.conditions = set_condition(
            self.conditions, type_, value, reason, message, generation=self.generation, now=self.now
        )

    def phase(self, phase: str, reason: str, message: str, warning: bool = False) -> None:
        if self.get("phase") != phase:
            self.events.append(("Warning" if warning else "Normal", reason, message))
        self.patch["phase"] = phase

    def result(self) -> dict[str, Any]:
        if self.conditions != list(self.old.get("conditions") or ()):
            self.patch["conditions"] = self.conditions
        if self.generation is not None:
            self.patch["observedGeneration"] = self.generation
        return {k: v for k, v in self.patch.items() if self.old.get(k) != v}


def _fail(w: _Writer, out: Plan, reason: str, message: str, pods: Sequence[Mapping[str, Any]]) -> None:
    w.phase(Phase.FAILED, reason, message, warning=True)
    w.cond(Condition.FAILED, True, reason, message)
    w.cond(Condition.RUNNING, False, Reason.FINISHED, "")
    w.cond(Condition.RESTARTING, False, reason, "")
    w.patch["completionTime"] = w.now
    out.delete_pods = [p["metadata"]["name"] for p in pods if not _deleting(p) and not terminated_state(p)]


def _suspended_seconds(annotations: Mapping[str, str]) -> float:
    try:
        return float(annotations.get(SUSPENDED_SECONDS_ANNOTATION, "0"))
    except ValueError:
        return 0.0


def plan(
    training: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], now: datetime.datetime | None = None
) -> Plan:
    """Decide the next step of ``training`` (a SOLOv2Training as the API returns it) given the worker
    pods that carry its labels."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    meta = training.get("metadata") or {}
    name, namespace = meta["name"], meta.get("namespace", "default")
    status = training.get("status") or {}
    w = _Writer(status, meta.get("generation"), now_iso(now))
    out = Plan()
    live = [p for p in pods if not _deleting(p)]
    phase = status.get("phase")

    def done() -> Plan:
        out.status = w.result()
        out.events = w.events
        return out

    if phase in Phase.FINAL:
        ttl = (training.get("spec") or {}).get("ttlSecondsAfterFinished")
        finished = parse_time(status.get("completionTime"))
        if ttl is not None and finished is not None and (now - finished).total_seconds() >= ttl:
            out.delete_training = True
        return done()

    try:
        spec = out.spec = read_spec(name, training.get("spec") or {})
        service = build_service(name, namespace, spec)
        podgroup = build_podgroup(name, namespace, spec)
        pod_bodies = build_pods(name, namespace, spec)
    except (SpecError, KeyError, TypeError, ValueError) as exc:
        _fail(w, out, Reason.INVALID_SPEC, f"{type(exc).__name__}: {exc}", pods)
        return done()

    w.patch.setdefault("workers", {"ready": sum(_ready(p) for p in live), "total": spec.nodes})
    if spec.suspend:
        w.cond(Condition.SUSPENDED, True, Reason.SUSPENDED, "spec.suspend is true")
        w.cond(Condition.RUNNING, False, Reason.SUSPENDED, "")
        w.cond(Condition.CREATED, False, Reason.SUSPENDED, "")
        out.delete_pods = [p["metadata"]["name"] for p in live]
        if not pods:
            w.phase(Phase.SUSPENDED, Reason.SUSPENDED, "workers deleted; checkpoints kept")
        return done()
    if is_true(status.get("conditions"), Condition.SUSPENDED):
        since = parse_time((_cond(status, Condition.SUSPENDED) or {}).get("lastTransitionTime"))
        total = _suspended_seconds(meta.get("annotations") or {})
        total += max(0.0, (now - since).total_seconds()) if since else 0.0
        out.annotations[SUSPENDED_SECONDS_ANNOTATION] = f"{total:.0f}"
        w.cond(Condition.SUSPENDED, False, Reason.RESUMED, "spec.suspend is false")
        w.events.append(("Normal", Reason.RESUMED, "re-creating the gang; it resumes from its checkpoint"))

    started = parse_time(status.get("startTime"))
    if spec.active_deadline_seconds and started is not None:
        suspended = float(out.annotations.get(SUSPENDED_SECONDS_ANNOTATION) or 0) or _suspended_seconds(
            meta.get("annotations") or {}
        )
        active = (now - started).total_seconds() - suspended
        if active > spec.active_deadline_seconds:
            message = (
                f"active for {active:.0f}s, more than activeDeadlineSeconds={spec.active_deadline_seconds}"
            )
            _fail(w, out, Reason.DEADLINE_EXCEEDED, message, pods)
            return done()

    created = is_true(w.conditions, Condition.CREATED)
    if phase == Phase.RESTARTING and not created:
        if pods:  # the old gang is still going away
            out.delete_pods = [p["metadata"]["name"] for p in live]
            return done()
        created = False

    by_index = {_index(p): p for p in live}
    failures = [f for f in (_failure(p) for p in live) if f is not None]
    if created:
        failures += [
            WorkerFailure(worker_name(name, i), None, "pod deleted", None)
            for i in range(spec.nodes)
            if i not in by_index
        ]
    failures = [f for f in failures if not (f.failure and f.failure.terminated and phase == Phase.SUSPENDED)]
    if failures:
        first = min(failures, key=lambda f: f.finished_at or "~")  # the root cause: the first to stop
        fatal = next((f for f in failures if f.failure is not None and not f.failure.retryable), None)
        if fatal is not None:
            _fail(w, out, Reason.NOT_RETRYABLE, fatal.describe(), pods)
            return done()
        restarts, disruptions = int(status.get("restarts", 0)), int(status.get("disruptions", 0))
        disrupted = next((why for why in map(_disruption, pods) if why), None)
        if disrupted is not None:  # the cluster's doing, not the training's: backoffLimit is not spent
            reason, message = Reason.WORKER_DISRUPTED, f"{disrupted}; not counted against backoffLimit"
            w.patch["disruptions"] = disruptions + 1
        elif restarts - disruptions >= spec.backoff_limit:
            message = f"{first.describe()}; backoffLimit {spec.backoff_limit} reached"
            _fail(w, out, Reason.BACKOFF_LIMIT_EXCEEDED, message, pods)
            return done()
        else:
            reason, message = Reason.WORKER_FAILED, first.describe()
        w.patch["restarts"] = restarts + 1
        w.phase(Phase.RESTARTING, reason, message, warning=True)
        w.cond(Condition.RESTARTING, True, reason, message)
        w.cond(Condition.RUNNING, False, Reason.GANG_RESTARTING, "")
        w.cond(Condition.CREATED, False, Reason.GANG_RESTARTING, "")
        out.delete_pods = [p["metadata"]["name"] for p in live]
        return done()

    if len(by_index) == spec.nodes and all(_succeeded(p) for p in by_index.values()):
        message = "every worker exited 0"
        results = parse_results((terminated_state(by_index[0]) or {}).get("message"))
        if results is not None:
            w.patch["results"] = results
            if "segmAP" in results:
                message += f"; mask AP {results['segmAP']}"
        w.phase(Phase.SUCCEEDED, Reason.TRAINING_SUCCEEDED, message)
        w.cond(Condition.SUCCEEDED, True, Reason.TRAINING_SUCCEEDED, message)
        w.cond(Condition.RUNNING, False, Reason.FINISHED, "")
        w.patch["completionTime"] = w.now
        return done()

    missing = [i for i in range(spec.nodes) if i not in by_index and not any(_index(p) == i for p in pods)]
    if missing or not created:
        out.create = [service, *([podgroup] if podgroup else []), *(pod_bodies[i] for i in missing)]
        if not status.get("startTime"):
            w.patch["startTime"] = w.now
        w.cond(Condition.CREATED, True, Reason.GANG_CREATED, f"Service and {spec.nodes} worker pods")
        last_failure = (_cond(status, Condition.RESTARTING) or {}).get("message", "")
        w.cond(Condition.RESTARTING, False, Reason.GANG_CREATED, last_failure)
        if missing and len(missing) == spec.nodes:
            w.events.append(("Normal", Reason.GANG_CREATED, f"created {spec.nodes} worker pods"))
    running = [p for p in by_index.values() if _phase(p) in ("Running", "Succeeded")]
    if len(running) == spec.nodes and not missing:
        w.phase(Phase.RUNNING, Reason.WORKERS_RUNNING, f"all {spec.nodes} workers run")
        w.cond(Condition.RUNNING, True, Reason.WORKERS_RUNNING, "")
    else:
        w.phase(Phase.PENDING, Reason.WORKERS_PENDING, "creating or scheduling the gang")
        waiting = [
            f"{worker_name(name, i)}: {why}"
            for i in range(spec.nodes)
            if (pod := by_index.get(i)) is not None
            and _phase(pod) == "Pending"
            and (why := _why_waiting(pod))
        ]
        message = "; ".join([f"{len(running)}/{spec.nodes} workers run", *waiting[:2]])
        if len(waiting) > 2:
            message += f"; and {len(waiting) - 2} more pods waiting"
        w.cond(Condition.RUNNING, False, Reason.WORKERS_PENDING, message)
    worker0 = by_index.get(0)
    if worker0 is not None and _phase(worker0) == "Running":
        out.read_progress_from = (worker0.get("status") or {}).get("podIP")
    return done()


def _cond(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in status.get("conditions") or ():
        if cond.get("type") == type_:
            return cond
    return None


def invalid(training: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], message: str) -> Plan:
    """``Failed`` with ``InvalidSpec``: the API server rejected a child built from the spec. Workers
    already created are deleted, so that no half gang is left."""
    meta = training.get("metadata") or {}
    w = _Writer(training.get("status") or {}, meta.get("generation"), now_iso())
    out = Plan()
    _fail(w, out, Reason.INVALID_SPEC, message, pods)
    out.status = w.result()
    out.events = w.events
    return out
