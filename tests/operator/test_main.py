"""``solov2-operator``: its flags reach kopf as documented."""

from __future__ import annotations

import kopf
import pytest

from solov2_operator import main as entry


@pytest.fixture
def kopf_run(monkeypatch):
    calls = []
    monkeypatch.setattr(kopf, "run", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(entry, "register", lambda registry, config: calls.append(config))
    return calls


def test_namespaces_and_endpoints_reach_kopf(kopf_run):
    entry.main(["--namespace", "ml", "-n", "research-*", "--liveness-port", "9090", "--metrics-port", "0"])
    config, run = kopf_run
    assert run["namespaces"] == ["ml", "research-*"] and run["clusterwide"] is False
    assert run["liveness_endpoint"] == "http://0.0.0.0:9090/healthz"
    assert config.metrics_port is None and config.resync_seconds == 10.0


def test_default_is_cluster_wide_with_metrics_on_8000(kopf_run):
    entry.main([])
    config, run = kopf_run
    assert run["clusterwide"] is True and run["namespaces"] == []
    assert config.metrics_port == 8000 and run["liveness_endpoint"] == "http://0.0.0.0:8080/healthz"


def test_namespace_and_all_namespaces_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        entry.main(["--namespace", "ml", "--all-namespaces"])
    assert "not allowed with" in capsys.readouterr().err
