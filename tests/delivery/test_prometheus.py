"""Every dashboard panel returns data from a real Prometheus server scraping a real CPU training of the
tiny config (and the operator's own metrics class), with the dashboard's template variables substituted."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from .conftest import CHART
from .dashboard import committed, panel_queries, substitute, variable_queries

pytestmark = pytest.mark.slow

NAMESPACE, TRAINING, POD = "vision", "tiny", "tiny-worker-0"  # the labels the chart's PodMonitor gives
SCRAPE = "500ms"
RATE_INTERVAL = "4s"  # Grafana's $__rate_interval for this scrape interval: 4 x scrape

# Rank 0 stops serving metrics as soon as training and evaluation finish; hold its server open for two
# seconds so that a scrape sees the final AP (in a cluster, the pod's last scrape races the exit alike).
TRAIN = """
import sys, time
from solov2 import metrics
from solov2.cli import main
close = metrics.TrainingMetrics.close
def linger(self):
    time.sleep(2)
    close(self)
metrics.TrainingMetrics.close = linger
sys.exit(main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _api(prom: str, path: str, **params: str) -> list:
    body = _get(f"{prom}/api/v1/{path}?{urllib.parse.urlencode(params)}")
    assert body["status"] == "success", body
    return body["data"]["result"] if isinstance(body["data"], dict) else body["data"]


def _prometheus_config(tmp_path: Path, trainer_port: int, operator_port: int) -> Path:
    config = {
        "global": {"scrape_interval": SCRAPE, "evaluation_interval": SCRAPE},
        "rule_files": [str(CHART / "rules" / "alerts.yaml")],
        "scrape_configs": [
            {  # what the PodMonitor yields: the pod's namespace, the training from its label, the pod
                "job_name": "trainings",
                "static_configs": [{"targets": [f"127.0.0.1:{trainer_port}"],
                                    "labels": {"namespace": NAMESPACE, "training": TRAINING, "pod": POD}}],
            },
            {  # what the ServiceMonitor yields: honorLabels keeps the metrics' own namespace label
                "job_name": "operator",
                "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{operator_port}"],
                                    "labels": {"namespace": "solov2-system"}}],
            },
        ],
    }  # fmt: skip
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_every_panel_returns_data(tool, tmp_path):
    from solov2.data.synthetic import write_synthetic_coco

    data = write_synthetic_coco(tmp_path / "coco", train=8, val=4, seed=3)
    trainer_port, operator_port, prom_port = _free_port(), _free_port(), _free_port()
    prom = f"http://127.0.0.1:{prom_port}"
    procs: list[subprocess.Popen] = []
    try:
        config = _prometheus_config(tmp_path, trainer_port, operator_port)
        with open(tmp_path / "prometheus.log", "w") as log:
            procs.append(subprocess.Popen(
                [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=log, stderr=subprocess.STDOUT,
            ))  # fmt: skip
        server = Path(__file__).with_name("operator_metrics_server.py")
        procs.append(subprocess.Popen([sys.executable, str(server), str(operator_port)]))
        _wait(lambda: urllib.request.urlopen(f"{prom}/-/ready", timeout=2).status == 200, 30, "prometheus")
        start = time.time()
        train = subprocess.run(
            [sys.executable, "-c", TRAIN, "train", "--config", "solov2_tiny_cpu", "--data-path", str(data),
             "--work-dir", str(tmp_path / "work"), "--device", "cpu", "--metrics-port", str(trainer_port),
             "--termination-log", str(tmp_path / "term"), "--opts", "train.epochs=2", "train.log_interval=1"],
            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert train.returncode == 0, train.stdout + train.stderr
        time.sleep(1)  # the last scrapes land
        end = time.time()

        variables = variable_queries(committed())
        selected = {"namespace": NAMESPACE, "training": TRAINING}
        for name, label, value in (("namespace", "namespace", NAMESPACE), ("training", "training", TRAINING)):
            matcher = substitute(variables[name], selected, RATE_INTERVAL)
            found = {s[label] for s in _api(prom, "series", **{"match[]": matcher, "start": str(start)})}
            assert found == {value}, f"variable {name}: {found}"

        empty = []
        for title, expr in panel_queries(committed()):
            query = substitute(expr, selected, RATE_INTERVAL)
            result = _api(prom, "query_range", query=query, start=str(start), end=str(end), step="1")
            if not result:
                empty.append(f"{title}: {query}")
        assert not empty, "panels without data:\n" + "\n".join(empty)
        ap = _api(prom, "query_range", query=f'solov2_eval_ap{{training="{TRAINING}", iou_type="segm", metric="AP"}}',
                  start=str(start), end=str(end), step="1")  # fmt: skip
        # The scraped AP is the one training reported (its termination message has 4 decimals).
        reported = json.loads((tmp_path / "term").read_text())["segm_AP"]
        assert ap and round(float(ap[0]["values"][-1][1]), 4) == reported
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
