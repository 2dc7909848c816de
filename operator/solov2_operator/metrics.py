"""The operator's own Prometheus metrics (served on ``--metrics-port``)."""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from . import __version__
from .status import Phase

__all__ = ["OperatorMetrics"]

_PHASES = (Phase.PENDING, Phase.RUNNING, Phase.RESTARTING, Phase.SUCCEEDED, Phase.FAILED, Phase.SUSPENDED)


class OperatorMetrics:
    """Trainings by phase, gang restarts, handler errors, failed progress reads, and the version."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.trainings = Gauge(
            "solov2_operator_trainings", "SOLOv2Trainings by phase", ["namespace", "phase"], registry=r
        )
        self.gang_restarts = Counter(
            "solov2_operator_gang_restarts", "Gangs deleted and re-created after a worker failed", ["namespace"],
            registry=r,
        )  # fmt: skip
        self.handler_errors = Counter(
            "solov2_operator_handler_errors", "Handler calls that raised", ["handler"], registry=r
        )
        self.progress_read_failures = Counter(
            "solov2_operator_progress_read_failures", "Reads of rank 0's metrics that got nothing", registry=r
        )
        Gauge("solov2_operator_info", "Operator version (value always 1)", ["version"], registry=r).labels(
            version=__version__
        ).set(1)
        self._phases: dict[tuple[str, str], str] = {}
        self._namespaces: set[str] = set()

    def observe(self, namespace: str, name: str, phase: str | None) -> None:
        """Record a training's current phase (None: it is gone)."""
        if phase is None:
            self._phases.pop((namespace, name), None)
        else:
            self._phases[(namespace, name)] = phase
        self._namespaces.add(namespace)
        counts = Tally((ns, phase) for (ns, _), phase in self._phases.items())
        for ns in self._namespaces:  # a namespace whose trainings are gone keeps its series at 0
            for p in _PHASES:
                self.trainings.labels(namespace=ns, phase=p).set(counts[(ns, p)])

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
