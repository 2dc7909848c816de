"""The Grafana dashboard: the committed JSON is the generator's output, every panel queries metrics that
exist (the trainer's exporter, the operator's registry), and the template variables filter them."""

from __future__ import annotations

import re
import subprocess
import sys

from .conftest import ROOT
from .dashboard import DASHBOARD, committed, generator, metric_names, panel_queries, variable_queries


def operator_metrics() -> set[str]:
    """Series names the operator exports, from its own registry."""
    from solov2_operator.metrics import OperatorMetrics

    metrics = OperatorMetrics()
    metrics.observe("ns", "t", "Succeeded", {"segmAP": 0.5})  # labelled families get a sample
    metrics.gang_restarts.labels(namespace="ns", cause="failure")
    metrics.handler_errors.labels(handler="h")
    names = {sample.name for family in metrics.registry.collect() for sample in family.samples}
    return {name for name in names if not name.endswith("_created")}


OPERATOR_METRICS = operator_metrics()


def trainer_metrics() -> set[str]:
    """Names the trainer exports, from the table in its metrics module's docstring."""
    text = (ROOT / "trainer" / "solov2" / "metrics.py").read_text()
    return set(re.findall(r"^``(solov2_\w+)", text, flags=re.M))


def test_committed_dashboard_is_the_generators_output(tmp_path):
    """``python dashboards/solov2_dashboard.py`` (the command the README gives) writes the committed JSON."""
    out = tmp_path / "solov2.json"
    subprocess.run([sys.executable, str(ROOT / "dashboards" / "solov2_dashboard.py"), str(out)], check=True)
    assert DASHBOARD.read_text() == out.read_text() == generator().render(), (
        "run: python dashboards/solov2_dashboard.py"
    )


def test_every_panel_queries_known_metrics():
    known = trainer_metrics() | OPERATOR_METRICS
    assert "solov2_train_images_per_second" in known
    for title, expr in panel_queries(committed()):
        names = metric_names(expr)
        assert names and names <= known, f"{title}: {sorted(names - known)} in {expr}"


def test_the_issue_asks_for_these_panels():
    queries = " ".join(expr for _, expr in panel_queries(committed()))
    wanted = {
        "images/s": "solov2_train_images_per_second",
        "loss": "solov2_train_loss",
        "learning rate": "solov2_train_learning_rate",
        "progress": "solov2_train_total_iterations",
        "epoch": "solov2_train_epoch",
        "ETA": "solov2_train_eta_seconds",
        "data wait": "solov2_train_data_wait_seconds",
        "non-finite": "solov2_train_nonfinite_steps_total",
        "dropped positives": "solov2_train_dropped_positives_total",
        "AP": "solov2_eval_ap",
    }
    assert {what for what, name in wanted.items() if name not in queries} == set()
    assert metric_names(queries) >= OPERATOR_METRICS


def test_trainer_panels_filter_by_namespace_and_training():
    for title, expr in panel_queries(committed()):
        for selector in re.findall(r"solov2_(?:train|eval)_\w+(\{[^}]*\})?", expr):
            assert 'namespace=~"$namespace"' in selector and 'training=~"$training"' in selector, (
                title,
                expr,
            )


def test_template_variables_chain_namespace_then_training():
    variables = variable_queries(committed())
    assert variables == {
        "namespace": "solov2_train_info",
        "training": 'solov2_train_info{namespace=~"$namespace"}',
    }


def test_panels_do_not_overlap():
    cells = set()
    for panel in committed()["panels"]:
        pos = panel["gridPos"]
        mine = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not cells & mine, panel["title"]
        assert pos["x"] + pos["w"] <= 24
        cells |= mine
