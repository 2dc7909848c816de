"""What the trainer tells the operator: rank 0's Prometheus metrics (progress) and the workers'
termination messages (results, or a failure and whether a retry can help). Pure functions."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from solov2_contract import (
    ERROR,
    ERROR_TYPE,
    PROGRESS_METRICS,
    RESULT_KEYS,
    RETRYABLE,
    TERMINATED_ERROR_TYPE,
)

from .manifests import CONTAINER as TRAINER_CONTAINER

__all__ = ["Failure", "parse_failure", "parse_progress", "parse_results"]

_INTEGER_FIELDS = {"epoch", "totalEpochs", "iteration", "totalIterations"}


def parse_progress(text: str) -> dict[str, Any]:
    """``status.progress`` fields from a Prometheus text exposition (``updatedAt`` not included).

    Metrics that are absent (the trainer has not logged yet) leave their fields out; an empty dict
    means nothing useful was there. Raises ValueError when the text is not Prometheus' format.
    """
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    progress: dict[str, Any] = {}
    for field, (metric, labels) in PROGRESS_METRICS.items():
        value = samples.get((metric, tuple(sorted(labels.items()))))
        if value is None or not math.isfinite(value):
            continue
        progress[field] = int(value) if field in _INTEGER_FIELDS else round(float(value), 6)
    total = progress.get("totalIterations")
    if total and "iteration" in progress:
        progress["percent"] = round(min(100.0, 100.0 * progress["iteration"] / total), 2)
    return progress


def _json_object(message: str | None) -> dict[str, Any] | None:
    if not message:
        return None
    try:
        value = json.loads(message.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    return value if isinstance(value, dict) else None


def parse_results(message: str | None) -> dict[str, Any] | None:
    """``status.results`` from worker 0's termination message: known keys renamed to camelCase,
    ``null`` values left out, the message itself in ``raw``; None when it is no JSON object or
    holds a failure."""
    data = _json_object(message)
    if data is None or ERROR in data:
        return None
    results: dict[str, Any] = {"raw": message.strip() if message else ""}
    for key, value in data.items():
        if key in RESULT_KEYS and value is not None:
            results[RESULT_KEYS[key]] = value
    return results


@dataclass(frozen=True)
class Failure:
    """A worker's failure as its termination message tells it (``error_type`` None: no message)."""

    error: str
    error_type: str | None
    retryable: bool

    @property
    def terminated(self) -> bool:
        """The trainer stopped on SIGTERM after saving a checkpoint (suspend, eviction, ...)."""
        return self.error_type == TERMINATED_ERROR_TYPE


def parse_failure(message: str | None) -> Failure | None:
    """The failure a termination message reports, or None if it reports none (or is not JSON)."""
    data = _json_object(message)
    if data is None or ERROR not in data:
        return None
    retryable = data.get(RETRYABLE, True)
    return Failure(
        error=str(data[ERROR]),
        error_type=str(data[ERROR_TYPE]) if data.get(ERROR_TYPE) is not None else None,
        retryable=retryable if isinstance(retryable, bool) else True,
    )


def terminated_state(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The trainer container's ``state.terminated`` (or None while it runs or waits); other containers
    (a sidecar an admission webhook injected) decide nothing."""
    for status in (pod.get("status") or {}).get("containerStatuses") or ():
        if status.get("name") == TRAINER_CONTAINER:
            return (status.get("state") or {}).get("terminated") or None
    return None
