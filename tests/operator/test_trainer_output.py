"""Reading what the trainer reports: progress from Prometheus text, results and failures from the
termination message (including the log lines Kubernetes puts there when the trainer wrote nothing)."""

from __future__ import annotations

import json

import pytest

from solov2_operator.trainer_output import parse_failure, parse_progress, parse_results


def test_progress_fields_and_percent_from_the_trainers_metrics():
    text = (
        "# TYPE solov2_train_iteration gauge\nsolov2_train_iteration 30\n"
        "solov2_train_total_iterations 120\nsolov2_train_epoch 1\n"
        'solov2_train_loss{component="cls"} 0.5\nsolov2_train_learning_rate 0.01\n'
        "solov2_train_eta_seconds NaN\nsolov2_train_step_seconds 0.2\n"
    )
    progress = parse_progress(text)
    assert progress == {
        "iteration": 30, "totalIterations": 120, "epoch": 1, "lossCls": 0.5, "learningRate": 0.01, "percent": 25.0,
    }  # fmt: skip


def test_a_page_without_training_metrics_is_no_progress():
    assert parse_progress("# HELP python_info x\npython_info 1\n") == {}
    with pytest.raises(ValueError):
        parse_progress("<html>not prometheus</html>")


def test_results_are_renamed_nulls_dropped_and_the_message_kept_raw():
    message = json.dumps({"segm_AP": 0.31, "segm_AP50": None, "images_per_second": 7.5, "truncated": True})
    results = parse_results(message)
    assert results == {"raw": message, "segmAP": 0.31, "imagesPerSecond": 7.5, "truncated": True}
    assert parse_results(json.dumps({"error": "x", "error_type": "DataError", "retryable": False})) is None
    assert parse_results("Traceback (most recent call last):\n  ...") is None


def test_failures_say_whether_a_retry_can_help():
    fatal = parse_failure(json.dumps({"error": "no val2017", "error_type": "DataError", "retryable": False}))
    assert fatal is not None and not fatal.retryable and fatal.error_type == "DataError"
    stop = parse_failure(
        json.dumps({"error": "terminated by SIGTERM at iteration 7; checkpoint /o/c", "error_type": "Terminated",
                    "retryable": True})
    )  # fmt: skip
    assert stop is not None and stop.terminated and stop.retryable
    assert parse_failure("RuntimeError: NCCL timeout\n") is None  # log lines: a failure, retried by default
    assert parse_failure(json.dumps({"segm_AP": 0.3})) is None
