"""Serves the operator's agreed metric names with sample values, on the port given as argument.

A stand-in for the operator's own endpoint while the operator package does not serve them yet: the
dashboard's operator panels are checked against these names."""

from __future__ import annotations

import sys
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, start_http_server


def main(port: int) -> None:
    registry = CollectorRegistry()
    trainings = Gauge(
        "solov2_operator_trainings", "Resources by phase", ["namespace", "phase"], registry=registry
    )
    restarts = Counter("solov2_operator_gang_restarts", "Gang restarts", ["namespace"], registry=registry)
    errors = Counter("solov2_operator_handler_errors", "Handler errors", ["handler"], registry=registry)
    read_failures = Counter(
        "solov2_operator_progress_read_failures", "Progress read failures", registry=registry
    )
    Info("solov2_operator", "Operator version", registry=registry).info({"version": "0.1.0"})
    trainings.labels(namespace="vision", phase="Running").set(1)
    trainings.labels(namespace="vision", phase="Failed").set(0)
    errors.labels(handler="create").inc(0)
    start_http_server(port, addr="127.0.0.1", registry=registry)
    while True:  # something moves, as in a live operator
        restarts.labels(namespace="vision").inc()
        read_failures.inc()
        time.sleep(1)


if __name__ == "__main__":
    main(int(sys.argv[1]))
