"""The operator's own Prometheus metrics (served on ``--metrics-port``).

Besides its health, the operator exports each finished training's COCO AP from ``status.results`` as
``solov2_operator_training_ap{namespace, training, iou_type, metric}`` (the labels of the trainer's
``solov2_eval_ap``): rank 0 exits right after evaluating, so a scrape of the trainer rarely sees its
final AP, while the operator keeps it for as long as the resource exists."""

from __future__ import annotations

import re
from collections import Counter as Tally
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from . import __version__
from .status import Phase

__all__ = ["OperatorMetrics"]

_AP_KEY = re.compile(r"^(segm|bbox)(AP(?:50|75|s|m|l)?)$")  # status.results keys: segmAP50 ...
_PHASES = (Phase.PENDING, Phase.RUNNING, Phase.RESTARTING, Phase.SUCCEEDED, Phase.FAILED, Phase.SUSPENDED)
_CAUSES = ("failure", "disruption")


class OperatorMetrics:
    """Trainings by phase, gang restarts, handler errors, failed progress reads, and the version."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.trainings = Gauge(
            "solov2_operator_trainings", "SOLOv2Trainings by phase", ["namespace", "phase"], registry=r
        )
        self.gang_restarts = Counter(
            "solov2_operator_gang_restarts",
            "Gangs deleted and re-created after a worker failed (cause: failure) or was preempted, evicted or lost "
            "with its node (cause: disruption)",
            ["namespace", "cause"], registry=r,
        )  # fmt: skip
        self.handler_errors = Counter(
            "solov2_operator_handler_errors", "Handler calls that raised", ["handler"], registry=r
        )
        self.progress_read_failures = Counter(
            "solov2_operator_progress_read_failures", "Reads of rank 0's metrics that got nothing", registry=r
        )
        self.training_ap = Gauge(
            "solov2_operator_training_ap", "COCO AP (0..1) in a finished training's status.results",
            ["namespace", "training", "iou_type", "metric"], registry=r,
        )  # fmt: skip
        Gauge("solov2_operator_info", "Operator version (value always 1)", ["version"], registry=r).labels(
            version=__version__
        ).set(1)
        self._phases: dict[tuple[str, str], str] = {}
        self._ap_labels: dict[tuple[str, str], set[tuple[str, str]]] = {}
        self._namespaces: set[str] = set()

    def observe(
        self, namespace: str, name: str, phase: str | None, results: Mapping[str, Any] | None = None
    ) -> None:
        """Record a training's current phase (None: it is gone) and the AP in its ``status.results``."""
        if phase is None:
            self._phases.pop((namespace, name), None)
        else:
            self._phases[(namespace, name)] = phase
        self._observe_ap(namespace, name, results if phase is not None else None)
        if namespace not in self._namespaces:
            # Its restart series exist at 0 before the first restart, so that increase() counts that one.
            self._namespaces.add(namespace)
            for cause in _CAUSES:
                self.gang_restarts.labels(namespace=namespace, cause=cause)
        counts = Tally((ns, phase) for (ns, _), phase in self._phases.items())
        for ns in self._namespaces:  # a namespace whose trainings are gone keeps its series at 0
            for p in _PHASES:
                self.trainings.labels(namespace=ns, phase=p).set(counts[(ns, p)])

    def _observe_ap(self, namespace: str, name: str, results: Mapping[str, Any] | None) -> None:
        values: dict[tuple[str, str], float] = {}
        for key, value in (results or {}).items():
            match = _AP_KEY.match(key)
            if match and isinstance(value, (int, float)):
                iou_type, metric = match.groups()
                values[(iou_type, metric)] = float(value)
        for (iou_type, metric), value in values.items():
            self.training_ap.labels(namespace, name, iou_type, metric).set(value)
        for iou_type, metric in self._ap_labels.pop((namespace, name), set()) - values.keys():
            self.training_ap.remove(namespace, name, iou_type, metric)
        if values:
            self._ap_labels[(namespace, name)] = set(values)

    def count_errors_of(self, handler: str) -> None:
        """Create ``handler``'s error series at 0 (when it is registered), so that increase() counts its
        first error."""
        self.handler_errors.labels(handler=handler)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
