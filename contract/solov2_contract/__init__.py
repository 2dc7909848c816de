"""The contract between the SOLOv2 trainer and the Kubernetes operator, in one torch-free module.

Both sides import these names: the trainer to publish its metrics and write its termination message,
the operator to build the workers' command line and to read progress and results back. docs/api.md
documents the same tables (a test holds them equal).
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_MASTER_PORT",
    "DEFAULT_METRICS_PORT",
    "ERROR",
    "ERROR_CHARS",
    "ERROR_TYPE",
    "PROGRESS_METRICS",
    "RESULT_KEYS",
    "RETRYABLE",
    "TERMINATED_ERROR_TYPE",
    "TERMINATED_EXIT_CODE",
    "TERMINATION_LOG",
    "TERMINATION_MESSAGE_LIMIT",
    "USER_ERROR_TYPES",
    "Metrics",
    "TrainFlags",
]

# ---------------------------------------------------------------------------------------------
# Ports and paths

DEFAULT_MASTER_PORT = 29500
"""torchrun's rendezvous port on worker 0."""
DEFAULT_METRICS_PORT = 9400
"""Rank 0's Prometheus port inside a worker pod."""
TERMINATION_LOG = "/dev/termination-log"
"""Where a worker's processes write the termination message (Kubernetes' default path)."""
TERMINATION_MESSAGE_LIMIT = 4096
"""Kubernetes keeps at most this many bytes of a container's termination message."""


# ---------------------------------------------------------------------------------------------
# Prometheus metrics served by rank 0


class Metrics:
    """Names of the trainer's metrics that the operator reads (``solov2 train --metrics-port``)."""

    EPOCH = "solov2_train_epoch"
    TOTAL_EPOCHS = "solov2_train_total_epochs"
    ITERATION = "solov2_train_iteration"
    TOTAL_ITERATIONS = "solov2_train_total_iterations"
    IMAGES_PER_SECOND = "solov2_train_images_per_second"
    LOSS = "solov2_train_loss"
    LOSS_LABEL = "component"
    LEARNING_RATE = "solov2_train_learning_rate"
    ETA_SECONDS = "solov2_train_eta_seconds"


PROGRESS_METRICS: dict[str, tuple[str, dict[str, str]]] = {
    "epoch": (Metrics.EPOCH, {}),
    "totalEpochs": (Metrics.TOTAL_EPOCHS, {}),
    "iteration": (Metrics.ITERATION, {}),
    "totalIterations": (Metrics.TOTAL_ITERATIONS, {}),
    "imagesPerSecond": (Metrics.IMAGES_PER_SECOND, {}),
    "loss": (Metrics.LOSS, {Metrics.LOSS_LABEL: "total"}),
    "lossCls": (Metrics.LOSS, {Metrics.LOSS_LABEL: "cls"}),
    "lossMask": (Metrics.LOSS, {Metrics.LOSS_LABEL: "mask"}),
    "learningRate": (Metrics.LEARNING_RATE, {}),
    "etaSeconds": (Metrics.ETA_SECONDS, {}),
}
"""``status.progress`` field -> (metric name, labels) of the sample it is read from."""


# ---------------------------------------------------------------------------------------------
# The termination message (one line of JSON, < 4 KiB)

_AP_KEYS = {
    f"{iou}_{metric}": f"{iou}{metric}"
    for iou in ("segm", "bbox")
    for metric in ("AP", "AP50", "AP75", "APs", "APm", "APl")
}
RESULT_KEYS: dict[str, str] = {
    **_AP_KEYS,
    "epochs": "epochs",
    "iterations": "iterations",
    "images_per_second": "imagesPerSecond",
    "nonfinite_steps": "nonfiniteSteps",
    "images": "images",
    "detections": "detections",
    "checkpoint": "checkpoint",
    "truncated": "truncated",
}
"""Key of a successful run's termination message -> key in ``status.results``."""

ERROR = "error"
"""Failure message key: what went wrong (at most :data:`ERROR_CHARS` characters)."""
ERROR_TYPE = "error_type"
"""Failure message key: the exception's class name."""
RETRYABLE = "retryable"
"""Failure message key: whether re-creating the gang can help (false for the user's mistakes)."""
ERROR_CHARS = 1000
"""Longest ``error`` text in a failure's termination message."""
USER_ERROR_TYPES = ("ConfigError", "DataError", "GroundTruthError", "WeightsError", "TrainingDiverged")
"""Error types of the user's making: the trainer writes ``retryable: false`` for them."""
TERMINATED_ERROR_TYPE = "Terminated"
"""``error_type`` of a trainer stopped by SIGTERM after checkpointing (suspend, eviction, preemption)."""
TERMINATED_EXIT_CODE = 143
"""Exit code of a trainer stopped by SIGTERM (128 + 15)."""


# ---------------------------------------------------------------------------------------------
# The trainer's command line, as the operator calls it


class TrainFlags:
    """Flags of ``solov2 train`` that the operator passes (``python -m solov2.cli train ...``)."""

    MODULE = "solov2.cli"
    COMMAND = "train"
    CONFIG = "--config"
    OPTS = "--opts"
    DATA_PATH = "--data-path"
    WORK_DIR = "--work-dir"
    DEVICE = "--device"
    RESUME = "--resume"
    LOAD_FROM = "--load-from"
    COMPILE = "--compile"
    NO_EVAL = "--no-eval"
    TERMINATION_LOG = "--termination-log"
    METRICS_PORT = "--metrics-port"
    STOP_TIMEOUT = "--stop-timeout"
