"""The Grafana dashboard of SOLOv2 trainings and of the operator, built with grafanalib.

``python dashboards/solov2_dashboard.py`` writes ``charts/solov2-operator/dashboards/solov2.json``, which
the chart ships in a ConfigMap for Grafana's sidecar (a test keeps the two equal, and another runs every
panel's query against a real Prometheus). Trainer series carry the ``namespace``, ``training`` and ``pod``
labels the chart's PodMonitor adds; operator series carry their own ``namespace``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafanalib import core as g
from grafanalib._gen import DashboardEncoder

OUT = Path(__file__).resolve().parents[1] / "charts" / "solov2-operator" / "dashboards" / "solov2.json"
DATASOURCE = "${datasource}"
SEL = 'namespace=~"$namespace", training=~"$training"'
NS = 'namespace=~"$namespace"'
WIDTH, HEIGHT = 8, 8


def final_ap(iou_type: str) -> str:
    """Rank 0 serves the AP only until it exits; the operator keeps it from the training's status."""
    sel = f'{SEL}, iou_type="{iou_type}"'
    return f"max by (training, metric) (solov2_eval_ap{{{sel}}} or solov2_operator_training_ap{{{sel}}})"


def _targets(*queries: tuple[str, str]) -> list[g.Target]:
    return [
        g.Target(expr=expr, legendFormat=legend, refId=chr(ord("A") + i), datasource=DATASOURCE)
        for i, (expr, legend) in enumerate(queries)
    ]


def series(title: str, description: str, *queries: tuple[str, str], unit: str = "short") -> g.TimeSeries:
    return g.TimeSeries(
        title=title, description=description, dataSource=DATASOURCE, targets=_targets(*queries), unit=unit
    )


def stat(title: str, description: str, *queries: tuple[str, str], unit: str = "none") -> g.Stat:
    return g.Stat(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=_targets(*queries),
        format=unit,
        reduceCalc="lastNotNull",
        graphMode="none",
    )


def rows() -> list[tuple[str, list[g.Panel]]]:
    return [
        ("Throughput", [
            series("Images/s per training", "Training images per second over all ranks (rank 0 reports it).",
                   (f"sum by (namespace, training) (solov2_train_images_per_second{{{SEL}}})",
                    "{{namespace}}/{{training}}")),
            series("Images/s per pod", "Throughput as served by each gang's rank-0 pod (a restarted gang "
                   "shows as a new series).", (f"solov2_train_images_per_second{{{SEL}}}", "{{pod}}")),
            series("Data-wait share of the step", "Time a step waits for the data loader, as a share of "
                   "the step time: near 1 means the input pipeline limits throughput.",
                   (f"solov2_train_data_wait_seconds{{{SEL}}} / solov2_train_step_seconds{{{SEL}}}",
                    "{{training}}"), unit="percentunit"),
        ]),
        ("Loss", [
            series("Loss and its components", "Last logged losses: total, category (focal) and mask (dice).",
                   (f"solov2_train_loss{{{SEL}}}", "{{training}} {{component}}")),
            series("Learning rate", "Current learning rate (warm-up, then step decay).",
                   (f"solov2_train_learning_rate{{{SEL}}}", "{{training}}")),
            series("Non-finite steps and dropped positives", "Steps skipped because the loss or a gradient "
                   "was not finite, and positive pairs beyond model.targets.max_positives, per interval.",
                   (f"increase(solov2_train_nonfinite_steps_total{{{SEL}}}[$__rate_interval])",
                    "{{training}} non-finite steps"),
                   (f"increase(solov2_train_dropped_positives_total{{{SEL}}}[$__rate_interval])",
                    "{{training}} dropped positives")),
        ]),
        ("Progress", [
            stat("Progress", "Iterations done of the whole run.",
                 (f"100 * solov2_train_iteration{{{SEL}}} / solov2_train_total_iterations{{{SEL}}}",
                  "{{training}}"), unit="percent"),
            stat("Epoch", "Current epoch (1-based) and epochs of the whole run.",
                 (f"solov2_train_epoch{{{SEL}}}", "{{training}} epoch"),
                 (f"solov2_train_total_epochs{{{SEL}}}", "{{training}} of")),
            stat("ETA", "Estimated time left in training.",
                 (f"solov2_train_eta_seconds{{{SEL}}}", "{{training}}"), unit="s"),
        ]),
        ("Results", [
            stat("Final mask AP", "COCO mask AP (0..1) once training and evaluation are done (from rank 0, "
                 "and from the operator for as long as the resource exists).",
                 (final_ap("segm"), "{{training}} {{metric}}"), unit="percentunit"),
            stat("Final box AP", "COCO box AP (0..1) of the boxes derived from the masks.",
                 (final_ap("bbox"), "{{training}} {{metric}}"), unit="percentunit"),
            stat("Finished", "1 once a training and its evaluation are done.",
                 (f"solov2_train_finished{{{SEL}}}", "{{training}}")),
        ]),
        ("Operator", [
            stat("Operator version", "Operators serving metrics, by version (none: the operator is down).",
                 ("count by (version) (solov2_operator_info)", "{{version}}")),
            series("Trainings by phase", "SOLOv2Training resources in each phase.",
                   (f"sum by (phase) (solov2_operator_trainings{{{NS}}})", "{{phase}}")),
            series("Gang restarts, handler errors, progress read failures", "Per interval: gangs re-created "
                   "after a worker failed or was disrupted (preempted, evicted, node lost), kopf handler errors, "
                   "failed reads of rank 0's metrics.",
                   (f"sum by (namespace, cause) (increase(solov2_operator_gang_restarts_total{{{NS}}}"
                    "[$__rate_interval]))", "{{namespace}} gang restarts ({{cause}})"),
                   ("sum by (handler) (increase(solov2_operator_handler_errors_total[$__rate_interval]))",
                    "{{handler}} errors"),
                   ("sum(increase(solov2_operator_progress_read_failures_total[$__rate_interval]))",
                    "progress read failures")),
        ]),
    ]  # fmt: skip


def templating() -> g.Templating:
    def variable(name: str, query: str) -> g.Template:
        return g.Template(name=name, label=name, query=query, dataSource=DATASOURCE, type="query",
                          refresh=2, includeAll=True, multi=True, allValue=".*", default="All")  # fmt: skip

    return g.Templating(
        list=[
            g.Template(name="datasource", label="Data source", query="prometheus", type="datasource"),
            variable("namespace", "label_values(solov2_train_info, namespace)"),
            variable("training", 'label_values(solov2_train_info{namespace=~"$namespace"}, training)'),
        ]
    )


def dashboard() -> g.Dashboard:
    panels: list[g.Panel] = []
    y = 0
    for title, row in rows():
        panels.append(g.RowPanel(title=title, gridPos=g.GridPos(h=1, w=24, x=0, y=y)))
        y += 1
        for i, panel in enumerate(row):
            panel.gridPos = g.GridPos(h=HEIGHT, w=WIDTH, x=i * WIDTH, y=y)
            panels.append(panel)
        y += HEIGHT
    return g.Dashboard(
        title="SOLOv2 training",
        uid="solov2-training",
        description="Throughput, losses, progress and results of SOLOv2Training resources, and the operator's health.",
        tags=["solov2"],
        timezone="browser",
        refresh="30s",
        time=g.Time("now-6h", "now"),
        templating=templating(),
        panels=panels,
    ).auto_panel_ids()


def render() -> str:
    return json.dumps(dashboard().to_json_data(), cls=DashboardEncoder, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render())
    print(out)
