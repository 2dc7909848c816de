"""Phases, conditions and their reasons (docs/api.md's tables), as pure functions on plain dicts."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "Condition",
    "Phase",
    "Reason",
    "now_iso",
    "parse_time",
    "set_condition",
]


class Phase:
    PENDING = "Pending"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    FINAL = (SUCCEEDED, FAILED)


class Condition:
    CREATED = "Created"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class Reason:
    GANG_CREATED = "GangCreated"
    CREATE_REFUSED = "CreateRefused"
    WORKERS_RUNNING = "WorkersRunning"
    WORKERS_PENDING = "WorkersPending"
    GANG_RESTARTING = "GangRestarting"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    FINISHED = "Finished"
    WORKER_FAILED = "WorkerFailed"
    WORKER_DISRUPTED = "WorkerDisrupted"
    TRAINING_SUCCEEDED = "TrainingSucceeded"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    INVALID_SPEC = "InvalidSpec"
    NOT_RETRYABLE = "NotRetryable"


def now_iso(now: datetime.datetime | None = None) -> str:
    """RFC 3339 time in UTC, seconds precision, as Kubernetes writes it."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    type_: str,
    status: bool,
    reason: str,
    message: str = "",
    *,
    generation: int | None = None,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """The conditions with ``type_`` set; ``lastTransitionTime`` moves only when ``status`` changes."""
    text = "True" if status else "False"
    out: list[dict[str, Any]] = []
    found = False
    for cond in conditions or ():
        if cond.get("type") != type_:
            out.append(dict(cond))
            continue
        found = True
        changed = cond.get("status") != text
        new = {
            **cond,
            "status": text,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now_iso() if changed else cond.get("lastTransitionTime", now or now_iso()),
        }
        if changed and now:
            new["lastTransitionTime"] = now
        if generation is not None:
            new["observedGeneration"] = generation
        out.append(new)
    if not found:
        new = {
            "type": type_,
            "status": text,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now or now_iso(),
        }
        if generation is not None:
            new["observedGeneration"] = generation
        out.append(new)
    return out


def condition(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for cond in conditions or ():
        if cond.get("type") == type_:
            return cond
    return None


def is_true(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> bool:
    cond = condition(conditions, type_)
    return cond is not None and cond.get("status") == "True"
