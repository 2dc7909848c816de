"""The gang's state from its pods, and what to do next: a pure decision on plain dicts.

:func:`plan` reads a SOLOv2Training and its worker pods and returns a :class:`Plan`: the status to
write, the children to create or delete, and the events to post. The handlers carry it out.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .manifests import (
    GANG_ANNOTATION,
    GANG_SIZE_ANNOTATION,
    LABEL_INDEX,
    build_podgroup,
    build_pods,
    build_service,
    worker_name,
)
from .spec import SpecError, TrainingSpec, read_spec
from .status import Condition, Phase, Reason, condition, is_true, now_iso, parse_time, set_condition
from .trainer_output import Failure, parse_failure, parse_results, terminated_state

__all__ = [
    "SUSPENDED_SECONDS_ANNOTATION",
    "SUSPENSION_COUNTED_ANNOTATION",
    "Plan",
    "WorkerFailure",
    "invalid",
    "plan",
    "refused",
]

SUSPENDED_SECONDS_ANNOTATION = "solov2.io/suspended-seconds"
"""Seconds the training spent suspended after its first start (excluded from ``activeDeadlineSeconds``)."""
SUSPENSION_COUNTED_ANNOTATION = "solov2.io/suspension-counted"
"""Start (``lastTransitionTime``) of the last suspension already added to the seconds above, so that a
resume retried after a failed status write does not add it twice."""


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
    vanished: list[str] = field(default_factory=list)
    """Workers judged "pod deleted": gone, with no last state known (see ``departed`` of :func:`plan`)."""
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


STUCK_AFTER_SECONDS = 60
"""How long past its deletion deadline (``deletionTimestamp``: the request plus the grace period) a pod
may take to go before the status says it looks stuck, as on a node that stopped reporting."""


def _stuck(pod: Mapping[str, Any], now: datetime.datetime) -> str | None:
    """The deletion deadline of a pod well past it, else None."""
    deadline = (pod.get("metadata") or {}).get("deletionTimestamp")
    when = parse_time(deadline)
    return deadline if when is not None and (now - when).total_seconds() > STUCK_AFTER_SECONDS else None


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
    if terminated is not None and terminated.get("exitCode", 0) == 0:
        return None  # the trainer finished; another container (a sidecar) may have failed the pod
    if terminated is not None:
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
    condition on a pod it preempts, evicts (``kubectl drain``, node pressure) or loses with its node; and
    a pod that failed before its trainer ever ran was refused by its node (the kubelet's admission:
    ``UnexpectedAdmissionError`` from a device plugin, ``OutOfcpu``, a node shutting down)."""
    name = (pod.get("metadata") or {}).get("name", "?")
    cond = _pod_condition(pod, "DisruptionTarget")
    if cond.get("status") == "True":
        details = ": ".join(part for part in (cond.get("reason"), cond.get("message")) if part)
        return f"pod {name} was disrupted ({details or 'DisruptionTarget'})"
    if _phase(pod) == "Failed" and terminated_state(pod) is None:
        status = pod.get("status") or {}
        details = ": ".join(part for part in (status.get("reason"), status.get("message")) if part)
        return f"pod {name} was refused by its node before the trainer started ({details or 'Failed'})"
    return None


_CLOCK_SKEW = datetime.timedelta(seconds=5)


def _disruption_behind(first: WorkerFailure, pods: Sequence[Mapping[str, Any]]) -> str | None:
    """The disruption behind a gang's failure whose root cause is ``first``: one of ``first``'s pod, or
    one that began before that pod stopped. A drain that began after a worker failed on its own (out of
    memory, say) does not make that failure the cluster's."""
    failed_at = parse_time(first.finished_at)
    for pod in pods:
        why = _disruption(pod)
        if why is None:
            continue
        since = parse_time(_pod_condition(pod, "DisruptionTarget").get("lastTransitionTime"))
        if pod["metadata"]["name"] == first.pod or failed_at is None or since is None:
            return why
        if since <= failed_at + _CLOCK_SKEW:  # kubelet and control-plane clocks may differ a little
            return why
    return None


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


def _owner_uid(pod: Mapping[str, Any]) -> str | None:
    refs = (pod.get("metadata") or {}).get("ownerReferences") or ()
    return next((ref.get("uid") for ref in refs if ref.get("controller")), None)


def _gang_size(pods: Sequence[Mapping[str, Any]], default: int) -> int:
    """The size the gang of ``pods`` was created with (each pod carries it), else ``default``."""
    sizes = [((p.get("metadata") or {}).get("annotations") or {}).get(GANG_SIZE_ANNOTATION) for p in pods]
    return max((int(s) for s in sizes if s and s.isdigit()), default=default)


def _gang_number(pod: Mapping[str, Any]) -> int | None:
    """The ``status.restarts`` the pod's gang was created at (None on a pod without it)."""
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(GANG_ANNOTATION)
    return int(value) if value is not None and value.isdigit() else None


def _names(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    return [p["metadata"]["name"] for p in pods]


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
    out.delete_pods = _unfinished(pods)


def _unfinished(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names of the pods that still run or wait (the trainer, or a sidecar beside a trainer that has
    finished) and that are not being deleted yet."""
    return [
        p["metadata"]["name"] for p in pods if not _deleting(p) and _phase(p) not in ("Succeeded", "Failed")
    ]


def _suspended_seconds(annotations: Mapping[str, str]) -> float:
    try:
        return float(annotations.get(SUSPENDED_SECONDS_ANNOTATION, "0"))
    except ValueError:
        return 0.0


@dataclass
class _Gang:
    """One reconciliation's view: the training, its spec and its pods."""

    training: Mapping[str, Any]
    spec: TrainingSpec
    w: _Writer
    out: Plan
    now: datetime.datetime
    ours: list[Mapping[str, Any]]
    """Pods of this training (a pod without an owner counts as one)."""
    earlier: list[Mapping[str, Any]]
    """Pods with this training's labels that an earlier training of the same name owns: deleted with it,
    they may still be stopping, and they hold the names the new gang needs."""
    departed: list[Mapping[str, Any]] = field(default_factory=list)
    """This training's workers that someone else deleted and that are gone, as last seen."""

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.training.get("metadata") or {}

    @property
    def status(self) -> Mapping[str, Any]:
        return self.training.get("status") or {}

    @property
    def phase(self) -> str | None:
        return self.status.get("phase")

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def live(self) -> list[Mapping[str, Any]]:
        return [p for p in self.ours if not _deleting(p)]

    @property
    def number(self) -> int:
        """The current gang's number: ``status.restarts`` (its pods carry it, see :func:`_gang_number`)."""
        return int(self.status.get("restarts", 0))

    def last_states(self) -> list[Mapping[str, Any]]:
        """The last known state of this gang's workers that are not live: being deleted (still listed)
        or gone (``departed``)."""
        deleting = [p for p in self.ours if _deleting(p) and _gang_number(p) == self.number]
        return [*self.departed, *deleting]

    def annotations(self) -> dict[str, str]:
        """The training's annotations with this plan's changes."""
        return {**(self.meta.get("annotations") or {}), **self.out.annotations}


def plan(
    training: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    now: datetime.datetime | None = None,
    departed: Sequence[Mapping[str, Any]] = (),
) -> Plan:
    """Decide the next step of ``training`` (a SOLOv2Training as the API returns it) given the worker
    pods that carry its labels, and the last state of those that someone else deleted and that are gone
    (``departed``: a missing worker is then judged by it)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    meta = training.get("metadata") or {}
    name, namespace = meta["name"], meta.get("namespace", "default")
    status = training.get("status") or {}
    w = _Writer(status, meta.get("generation"), now_iso(now))
    out = Plan()

    def done() -> Plan:
        out.status = w.result()
        out.events = w.events
        return out

    uid = meta.get("uid")
    if status.get("phase") in Phase.FINAL:
        # Workers a failed deletion left running are stopped (the status is written before pods are deleted).
        out.delete_pods = _unfinished([p for p in pods if _owner_uid(p) in (None, uid)])
        ttl = (training.get("spec") or {}).get("ttlSecondsAfterFinished")
        finished = parse_time(status.get("completionTime"))
        out.delete_training = (
            ttl is not None and finished is not None and (now - finished).total_seconds() >= ttl
        )
        return done()

    try:
        spec = out.spec = read_spec(name, training.get("spec") or {})
        children = [build_service(name, namespace, spec), build_podgroup(name, namespace, spec)]
        number = int(status.get("restarts", 0))  # the gang's: see _Gang.number
        pod_bodies = build_pods(name, namespace, spec, gang=number)
    except (SpecError, KeyError, TypeError, ValueError) as exc:
        _fail(w, out, Reason.INVALID_SPEC, f"{type(exc).__name__}: {exc}", pods)
        return done()

    gang = _Gang(
        training, spec, w, out, now,
        ours=[p for p in pods if _owner_uid(p) in (None, uid)],
        earlier=[p for p in pods if _owner_uid(p) not in (None, uid)],
        # Only this gang's: an earlier gang's pod of the same name tells nothing about this one.
        departed=[
            p for p in departed
            if _owner_uid(p) in (None, uid) and _gang_number(p) == number
        ],
    )  # fmt: skip
    created = is_true(w.conditions, Condition.CREATED)
    # A running gang keeps the size it was created with: a new `nodes` takes effect with the next gang.
    size = _gang_size(gang.ours, spec.nodes) if created else spec.nodes
    w.patch.setdefault("workers", {"ready": sum(_ready(p) for p in gang.live), "total": size})

    by_index = {_index(p): p for p in gang.live}
    exited = {**{_index(p): p for p in gang.last_states() if _succeeded(p)}, **by_index}
    if len(exited) == size and all(_succeeded(p) for p in exited.values()):
        # Before a suspension (its results would be deleted with the pods) and before the deadline (a
        # training that finished in time is not failed). A worker that finished and was then removed
        # (a drain deletes finished pods too) counts by its last state.
        _succeed(gang, exited[0])
        return done()
    if spec.suspend:
        _suspend(gang)
        return done()
    if is_true(status.get("conditions"), Condition.SUSPENDED):
        _resume(gang)
    if _past_deadline(gang):
        return done()
    if not created and _previous_gang_leaving(gang):
        return done()
    if _failed(gang, by_index, size if created else 0):
        return done()
    _create_or_watch(gang, by_index, size, [c for c in children if c is not None], pod_bodies)
    return done()


def _suspend(gang: _Gang) -> None:
    w = gang.w
    w.cond(Condition.SUSPENDED, True, Reason.SUSPENDED, "spec.suspend is true")
    w.cond(Condition.RUNNING, False, Reason.SUSPENDED, "")
    w.cond(Condition.CREATED, False, Reason.SUSPENDED, "")
    gang.out.delete_pods = _names(gang.live)
    if not gang.ours:
        w.phase(Phase.SUSPENDED, Reason.SUSPENDED, "workers deleted; checkpoints kept")


def _resume(gang: _Gang) -> None:
    """``suspend`` went back to false: count the suspension's time (only time after the first start
    counts towards the deadline, so a training created suspended has nothing to add) and say so."""
    since_text = (condition(gang.status.get("conditions"), Condition.SUSPENDED) or {}).get(
        "lastTransitionTime"
    )
    since = parse_time(since_text)
    annotations = gang.meta.get("annotations") or {}
    if (
        since
        and gang.status.get("startTime")
        and annotations.get(SUSPENSION_COUNTED_ANNOTATION) != since_text
    ):
        total = _suspended_seconds(annotations) + max(0.0, (gang.now - since).total_seconds())
        gang.out.annotations[SUSPENDED_SECONDS_ANNOTATION] = f"{total:.0f}"
        gang.out.annotations[SUSPENSION_COUNTED_ANNOTATION] = str(since_text)
    gang.w.cond(Condition.SUSPENDED, False, Reason.RESUMED, "spec.suspend is false")
    gang.w.events.append(("Normal", Reason.RESUMED, "re-creating the gang; it resumes from its checkpoint"))


def _succeed(gang: _Gang, worker0: Mapping[str, Any]) -> None:
    w = gang.w
    message = "every worker exited 0"
    results = parse_results((terminated_state(worker0) or {}).get("message"))
    if results is not None:
        w.patch["results"] = results
        if "segmAP" in results:
            message += f"; mask AP {results['segmAP']}"
    w.phase(Phase.SUCCEEDED, Reason.TRAINING_SUCCEEDED, message)
    w.cond(Condition.SUCCEEDED, True, Reason.TRAINING_SUCCEEDED, message)
    w.cond(Condition.RUNNING, False, Reason.FINISHED, "")
    w.patch["completionTime"] = w.now


def _past_deadline(gang: _Gang) -> bool:
    """``Failed`` once the active time (from the first start, suspensions excluded) passes the deadline."""
    started = parse_time(gang.status.get("startTime"))
    limit = gang.spec.active_deadline_seconds
    if not limit or started is None:
        return False
    active = (gang.now - started).total_seconds() - _suspended_seconds(gang.annotations())
    if active <= limit:
        return False
    message = f"active for {active:.0f}s, more than activeDeadlineSeconds={limit}"
    _fail(gang.w, gang.out, Reason.DEADLINE_EXCEEDED, message, gang.ours)
    return True


def _previous_gang_leaving(gang: _Gang) -> bool:
    """Before a gang is created, the previous one (after a failure or a suspension, or an earlier training
    of the same name) must be gone: its pods hold the names, and a stopping worker may still write its
    checkpoint. True while that is being waited for (the live pods of a failed gang are deleted)."""
    w, out = gang.w, gang.out
    restarting = gang.phase == Phase.RESTARTING
    # While restarting, live pods of another gang number are the failed gang's (their deletion may have
    # failed after the status was written); those of the current number are the new gang's, created
    # already (a status write or a pod create that failed part-way): they stay.
    stale = [
        p for p in gang.live
        if restarting and (_gang_number(p) != gang.number or _gang_size([p], -1) != gang.spec.nodes)
    ]  # fmt: skip
    leaving = [*gang.earlier, *(p for p in gang.ours if _deleting(p)), *stale]
    if not leaving:
        return False
    names = ", ".join(_names(leaving)[:3]) + (f" and {len(leaving) - 3} more" if len(leaving) > 3 else "")
    message = f"waiting for the previous gang's pods to go away: {names}"
    stuck = next(((p["metadata"]["name"], d) for p in leaving if (d := _stuck(p, gang.now))), None)
    if stuck is not None:
        pod_name, deadline = stuck
        message += (
            f"; {pod_name} is past its deletion deadline ({deadline}): if its node is lost, "
            f"kubectl delete pod {pod_name} --force once the node is known to be down"
        )
    if restarting:
        out.delete_pods = _names(stale)
        w.cond(Condition.RUNNING, False, Reason.GANG_RESTARTING, message)
        # A worker of the failed gang whose own failure was not retryable ends the training, even if
        # a peer's consequential error was seen first.
        fatal = next(
            (f for f in map(_failure, gang.ours) if f and f.failure and not f.failure.retryable), None
        )
        if fatal is not None:
            _fail(w, out, Reason.NOT_RETRYABLE, fatal.describe(), gang.ours)
        return True
    w.phase(Phase.PENDING, Reason.WORKERS_PENDING, message)
    w.cond(Condition.RUNNING, False, Reason.WORKERS_PENDING, message)
    return True


def _failed(gang: _Gang, by_index: Mapping[int | None, Mapping[str, Any]], size: int) -> bool:
    """A failed or missing worker (of ``size``: 0 before the gang is created) fails the gang: ``Failed``
    if it cannot be retried, else ``Restarting``. True if so."""
    w, out, spec, status = gang.w, gang.out, gang.spec, gang.status
    failures = [f for f in map(_failure, gang.live) if f is not None]
    last_states = {_index(p): p for p in gang.last_states()}
    for i in range(size):
        if i in by_index:
            continue
        name, last = worker_name(gang.name, i), last_states.get(i)
        if last is None and not any(_index(p) == i for p in gang.ours):
            gang.out.vanished.append(name)  # no trace at all: its deletion event may be on its way
        failures.append((last and _failure(last)) or WorkerFailure(name, None, "pod deleted", None))
    suspended = gang.phase == Phase.SUSPENDED
    failures = [f for f in failures if not (f.failure and f.failure.terminated and suspended)]
    if not failures:
        return False
    first = min(failures, key=lambda f: f.finished_at or "~")  # the root cause: the first to stop
    fatal = next((f for f in failures if f.failure is not None and not f.failure.retryable), None)
    if fatal is not None:
        _fail(w, out, Reason.NOT_RETRYABLE, fatal.describe(), gang.ours)
        return True
    restarts, disruptions = gang.number, int(status.get("disruptions", 0))
    disrupted = _disruption_behind(first, [*gang.ours, *gang.departed])
    if disrupted is not None:  # the cluster's doing, not the training's: backoffLimit is not spent
        reason, message = Reason.WORKER_DISRUPTED, f"{disrupted}; not counted against backoffLimit"
        w.patch["disruptions"] = disruptions + 1
    elif restarts - disruptions >= spec.backoff_limit:
        message = f"{first.describe()}; backoffLimit {spec.backoff_limit} reached"
        _fail(w, out, Reason.BACKOFF_LIMIT_EXCEEDED, message, gang.ours)
        return True
    else:
        reason, message = Reason.WORKER_FAILED, first.describe()
    w.patch["restarts"] = restarts + 1
    w.phase(Phase.RESTARTING, reason, message, warning=True)
    w.cond(Condition.RESTARTING, True, reason, message)
    w.cond(Condition.RUNNING, False, Reason.GANG_RESTARTING, "")
    w.cond(Condition.CREATED, False, Reason.GANG_RESTARTING, "")
    out.delete_pods = _names(gang.live)
    return True


def _create_or_watch(
    gang: _Gang,
    by_index: Mapping[int | None, Mapping[str, Any]],
    size: int,
    children: list[dict[str, Any]],
    pod_bodies: Sequence[dict[str, Any]],
) -> None:
    """Create what the gang lacks (before it is created), and report how far its workers are."""
    w, out, status, name = gang.w, gang.out, gang.status, gang.name
    created = is_true(w.conditions, Condition.CREATED)
    missing = [i for i in range(size) if i not in by_index and not any(_index(p) == i for p in gang.ours)]
    if missing or not created:
        out.create = [*children, *(pod_bodies[i] for i in missing)]
        if not status.get("startTime"):
            w.patch["startTime"] = w.now
        w.cond(Condition.CREATED, True, Reason.GANG_CREATED, f"Service and {size} worker pods")
        last_failure = (condition(status.get("conditions"), Condition.RESTARTING) or {}).get("message", "")
        w.cond(Condition.RESTARTING, False, Reason.GANG_CREATED, last_failure)
        if missing and len(missing) == size:
            w.events.append(("Normal", Reason.GANG_CREATED, f"created {size} worker pods"))
    # Phase Unknown: the pod's node stopped reporting; its worker ran when last seen, and the node
    # controller evicts it (a disruption) if the node does not come back.
    running = [p for p in by_index.values() if _phase(p) in ("Running", "Unknown") or _succeeded(p)]
    if len(running) == size and not missing:
        w.phase(Phase.RUNNING, Reason.WORKERS_RUNNING, f"all {size} workers run")
        silent = [worker_name(name, i) for i in range(size) if _phase(by_index.get(i) or {}) == "Unknown"]
        message = f"the nodes of {', '.join(silent)} do not report (pod phase Unknown)" if silent else ""
        w.cond(Condition.RUNNING, True, Reason.WORKERS_RUNNING, message)
    else:
        w.phase(Phase.PENDING, Reason.WORKERS_PENDING, "creating or scheduling the gang")
        waiting = [
            f"{worker_name(name, i)}: {why}"
            for i in range(size)
            if (pod := by_index.get(i)) is not None
            and _phase(pod) == "Pending"
            and (why := _why_waiting(pod))
        ]
        message = "; ".join([f"{len(running)}/{size} workers run", *waiting[:2]])
        if len(waiting) > 2:
            message += f"; and {len(waiting) - 2} more pods waiting"
        w.cond(Condition.RUNNING, False, Reason.WORKERS_PENDING, message)
    worker0 = by_index.get(0)
    if worker0 is not None and _phase(worker0) == "Running":
        out.read_progress_from = (worker0.get("status") or {}).get("podIP")


def _decided_alone(training: Mapping[str, Any], decide: Callable[[_Writer, Plan], None]) -> Plan:
    meta = training.get("metadata") or {}
    w = _Writer(training.get("status") or {}, meta.get("generation"), now_iso())
    out = Plan()
    decide(w, out)
    out.status = w.result()
    out.events = w.events
    return out


def invalid(training: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], message: str) -> Plan:
    """``Failed`` with ``InvalidSpec``: the API server rejected a child built from the spec. Workers
    already created are deleted, so that no half gang is left."""
    return _decided_alone(training, lambda w, out: _fail(w, out, Reason.INVALID_SPEC, message, pods))


def refused(training: Mapping[str, Any], message: str) -> Plan:
    """The API server refused a child for a reason that may pass (a quota, an admission policy, RBAC, no
    PodGroup CRD): the gang is not created. Says why (condition ``Created``, reason ``CreateRefused``; a
    new training is ``Pending``) with one Warning event per new message; the next resync tries again."""

    def decide(w: _Writer, out: Plan) -> None:
        old = condition(w.conditions, Condition.CREATED) or {}
        if w.get("phase") is None:
            w.patch["phase"] = Phase.PENDING
        if not w.get("startTime"):  # activeDeadlineSeconds also bounds a gang that is never admitted
            w.patch["startTime"] = w.now
        w.cond(Condition.CREATED, False, Reason.CREATE_REFUSED, message)
        if old.get("message") != message or old.get("reason") != Reason.CREATE_REFUSED:
            w.events.append(("Warning", Reason.CREATE_REFUSED, message))

    return _decided_alone(training, decide)
