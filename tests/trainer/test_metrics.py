"""Prometheus metrics over HTTP, the Kubernetes termination message and progress lines."""

from __future__ import annotations

import json
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from solov2.metrics import (
    TERMINATION_MESSAGE_LIMIT,
    NullMetrics,
    TrainingMetrics,
    failure_message,
    write_termination_message,
)

from .samples import PROGRESS_UPDATE as UPDATE


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def metrics():
    m = TrainingMetrics(port=0, addr="127.0.0.1")
    yield m
    m.close()


def test_metrics_are_served_and_follow_updates(metrics: TrainingMetrics):
    assert metrics.port and metrics.port > 0
    before = scrape(metrics.port)
    assert before[("solov2_train_iteration", ())] == 0
    assert before[("solov2_train_finished", ())] == 0

    metrics.set_info(config="solov2_tiny_cpu", device="cpu", world_size=2)
    metrics.update(**UPDATE, total_epochs=12)
    metrics.add_nonfinite()
    metrics.add_dropped_positives(5)
    metrics.add_dropped_positives(0)
    metrics.add_truncated(3)
    after = scrape(metrics.port)
    assert after[("solov2_train_epoch", ())] == 2
    assert after[("solov2_train_total_epochs", ())] == 12
    assert after[("solov2_train_iteration", ())] == 340
    assert after[("solov2_train_total_iterations", ())] == 1000
    assert after[("solov2_train_images_per_second", ())] == pytest.approx(4.2)
    assert after[("solov2_train_learning_rate", ())] == pytest.approx(0.01)
    assert after[("solov2_train_eta_seconds", ())] == pytest.approx(312.4)
    assert after[("solov2_train_data_wait_seconds", ())] == pytest.approx(0.01)
    assert after[("solov2_train_step_seconds", ())] == pytest.approx(0.47)
    for component, value in UPDATE["losses"].items():
        assert after[("solov2_train_loss", (("component", component),))] == pytest.approx(value)
    assert after[("solov2_train_nonfinite_steps_total", ())] == 1
    assert after[("solov2_train_dropped_positives_total", ())] == 5
    assert after[("solov2_train_truncated_instances_total", ())] == 3
    info = (("config", "solov2_tiny_cpu"), ("device", "cpu"), ("world_size", "2"))
    assert after[("solov2_train_info", info)] == 1

    metrics.update(**{**UPDATE, "iteration": 341, "losses": {"loss_cls": 0.25}}, total_epochs=12)
    metrics.set_results({"segm_AP": 0.371, "segm_APl": 0.5, "bbox_AP": 0.4, "images": 5000})
    metrics.finish()
    final = scrape(metrics.port)
    assert final[("solov2_train_iteration", ())] == 341
    assert final[("solov2_train_loss", (("component", "cls"),))] == pytest.approx(0.25)
    assert final[("solov2_eval_ap", (("iou_type", "segm"), ("metric", "AP")))] == pytest.approx(0.371)
    assert final[("solov2_eval_ap", (("iou_type", "segm"), ("metric", "APl")))] == pytest.approx(0.5)
    assert final[("solov2_eval_ap", (("iou_type", "bbox"), ("metric", "AP")))] == pytest.approx(0.4)
    assert final[("solov2_train_finished", ())] == 1


def test_instances_have_their_own_registries_and_close_frees_the_port():
    first, second = TrainingMetrics(port=0, addr="127.0.0.1"), TrainingMetrics()
    second.update(**UPDATE, total_epochs=12)  # no server, no clash with the first one's metrics
    assert second.port is None
    assert scrape(first.port)[("solov2_train_iteration", ())] == 0
    port = first.port
    first.close()
    first.close()  # idempotent
    with pytest.raises(urllib.error.URLError):
        scrape(port)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


def test_set_info_rejects_bad_label_names():
    with pytest.raises(ValueError, match="label name"):
        TrainingMetrics().set_info(**{"bad-name": "x"})


def test_null_metrics_accepts_every_call():
    m = NullMetrics()
    m.set_info(config="x")
    m.update(**UPDATE)
    m.add_nonfinite()
    m.add_dropped_positives(2)
    m.add_truncated(1)
    m.set_results({"segm_AP": 0.1})
    m.finish()
    m.close()
    assert m.port is None


def test_termination_message_is_compact_rounded_json(tmp_path: Path):
    path = tmp_path / "termination-log"
    results = {"segm_AP": 0.123456789, "epochs": 12, "checkpoint": "/out/epoch_12.pth", "bad": float("nan")}
    write_termination_message(path, results)
    text = path.read_text()
    assert " " not in text
    assert json.loads(text) == {
        "segm_AP": 0.1235,
        "epochs": 12,
        "checkpoint": "/out/epoch_12.pth",
        "bad": None,
    }
    write_termination_message(str(path), {"segm_AP": 0.5})  # replaced, not appended
    assert json.loads(path.read_text()) == {"segm_AP": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["termination-log"]  # no temporary file left


def test_termination_message_stays_under_the_kubernetes_limit(tmp_path: Path):
    path = tmp_path / "termination-log"
    results = {f"extra_metric_{i}": i / 7 for i in range(1000)}
    results |= {"segm_AP": 0.4, "bbox_AP": 0.42, "epochs": 36, "iterations": 270000, "checkpoint": "/c.pth"}
    write_termination_message(path, results)
    data = path.read_bytes()
    assert len(data) < TERMINATION_MESSAGE_LIMIT
    message = json.loads(data)
    assert message["truncated"] is True
    assert message["segm_AP"] == 0.4 and message["epochs"] == 36 and message["checkpoint"] == "/c.pth"
    assert "extra_metric_0" in message  # others fill the space left

    write_termination_message(path, {"segm_AP": 0.4, "checkpoint": "x" * 10000})  # one huge value
    data = path.read_bytes()
    assert len(data) < TERMINATION_MESSAGE_LIMIT
    assert json.loads(data) == {"truncated": True, "segm_AP": 0.4}


def test_termination_message_errors_and_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    missing = tmp_path / "no" / "such" / "termination-log"
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        write_termination_message(missing, {"segm_AP": 0.1})
    assert str(missing) in str(info.value)

    def refuse(*args, **kwargs):
        raise PermissionError("read-only directory")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # e.g. /dev: the file is writable, the dir is not
    path = tmp_path / "termination-log"
    path.write_text("old")
    write_termination_message(path, {"epochs": 1})
    assert json.loads(path.read_text()) == {"epochs": 1}


def test_failure_message_says_what_failed_and_whether_a_retry_can_help(tmp_path):
    from solov2.errors import ConfigError

    user = failure_message(ConfigError("model.head.num_classes: is 80 but the data set defines 3 categories"))
    assert user == {
        "error": "model.head.num_classes: is 80 but the data set defines 3 categories",
        "error_type": "ConfigError",
        "retryable": False,
    }
    crash = failure_message(RuntimeError("x" * 5000))
    assert crash["retryable"] is True and crash["error_type"] == "RuntimeError"
    assert len(crash["error"]) == 1000 and crash["error"].endswith("...")
    write_termination_message(tmp_path / "log", crash)
    assert json.loads((tmp_path / "log").read_text()) == crash
    # Characters that JSON escapes (6 bytes each) or that take 4 bytes in UTF-8: the message is cut
    # where it still fits, instead of losing its error.
    for text in ("\x01" * 5000, "\N{SNAKE}" * 5000, "path: " + "\x1b[31m" * 900):
        clipped = failure_message(RuntimeError(text))
        write_termination_message(tmp_path / "log", clipped)
        written = (tmp_path / "log").read_bytes()
        assert len(written) < TERMINATION_MESSAGE_LIMIT
        message = json.loads(written)
        assert message == clipped and "truncated" not in message
        assert message["error"].endswith("...") and text.startswith(message["error"][:-3])
        assert len(message["error"]) > 500
    # A file name that was not valid UTF-8 (a lone surrogate in Python) is written as a JSON escape.
    undecodable = failure_message(RuntimeError("cannot read 'x\udcff.jpg'"))
    write_termination_message(tmp_path / "log", undecodable)
    assert json.loads((tmp_path / "log").read_bytes()) == undecodable
