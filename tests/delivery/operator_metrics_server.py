"""Serves the operator's real metrics (``solov2_operator.metrics.OperatorMetrics``) on the port given as
argument, fed with a few trainings' phases and restarts as a live operator would feed them.

The operator itself needs an API server to run; the dashboard's operator panels only need its metrics."""

from __future__ import annotations

import sys
import time

from solov2_operator.metrics import OperatorMetrics


def main(port: int) -> None:
    metrics = OperatorMetrics()
    metrics.observe("vision", "tiny", "Succeeded", {"segmAP": 0.31, "segmAP50": 0.55, "bboxAP": 0.22})
    metrics.observe("vision", "old", "Failed")
    metrics.handler_errors.labels(handler="reconcile").inc(0)
    metrics.serve(port, addr="127.0.0.1")
    while True:  # something moves, as in a live operator
        metrics.gang_restarts.labels(namespace="vision", cause="failure").inc()
        metrics.progress_read_failures.inc()
        time.sleep(1)


if __name__ == "__main__":
    main(int(sys.argv[1]))
