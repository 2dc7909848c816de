"""The operator's counters exist at 0 before their first event, so that Prometheus' increase() (the alert
on repeated gang restarts, the dashboard) counts that event too."""

from __future__ import annotations

import kopf

from solov2_operator.handlers import OperatorConfig, register
from solov2_operator.metrics import OperatorMetrics


def test_counters_are_at_zero_before_their_first_event():
    metrics = OperatorMetrics()
    register(kopf.OperatorRegistry(), OperatorConfig(metrics=metrics))
    value = metrics.registry.get_sample_value
    for handler in ("training", "pod", "resync"):
        assert value("solov2_operator_handler_errors_total", {"handler": handler}) == 0
    assert value("solov2_operator_gang_restarts_total", {"namespace": "vision", "cause": "failure"}) is None
    metrics.observe("vision", "a", "Pending")
    for cause in ("failure", "disruption"):
        assert value("solov2_operator_gang_restarts_total", {"namespace": "vision", "cause": cause}) == 0
