"""Training telemetry: Prometheus metrics and the Kubernetes termination message.

Rank 0 serves these metrics over HTTP (``/metrics``, any path) when ``--metrics-port`` is given; the
names are a contract with the Kubernetes operator that scrapes them:

================================================  =======  ==================================================
name                                              type     meaning
================================================  =======  ==================================================
``solov2_train_images_per_second``                gauge    training throughput of all ranks together
                                                           (world size x batch / step time, smoothed)
``solov2_train_loss{component}``                  gauge    logged loss, the mean of the applied steps since
                                                           the previous line; ``component`` is ``total``,
                                                           ``cls`` or ``mask``
``solov2_train_learning_rate``                    gauge    learning rate of the last step
``solov2_train_epoch``                            gauge    current epoch, 1-based
``solov2_train_total_epochs``                     gauge    epochs of the whole run
``solov2_train_iteration``                        gauge    global iterations done
``solov2_train_total_iterations``                 gauge    global iterations of the whole run
``solov2_train_eta_seconds``                      gauge    estimated seconds left in training
``solov2_train_data_wait_seconds``                gauge    time a step waited for data (smoothed)
``solov2_train_step_seconds``                     gauge    time of one training step (smoothed)
``solov2_train_nonfinite_steps_total``            counter  steps skipped because the loss was not finite
``solov2_train_dropped_positives_total``          counter  positive (instance, cell) pairs beyond
                                                           ``model.targets.max_positives``, all processes
``solov2_train_truncated_instances_total``        counter  instances beyond ``model.targets.max_instances``,
                                                           all processes (counted at the end of an epoch)
``solov2_eval_ap{iou_type, metric}``              gauge    final COCO results: ``iou_type`` ``segm`` or
                                                           ``bbox``; ``metric`` ``AP``, ``AP50``, ``AP75``,
                                                           ``APs``, ``APm``, ``APl``; values in 0..1
``solov2_train_info{config, device, world_size,  gauge    always 1; labels describe the run (``optimizer``:
 optimizer}``                                              the implementation, e.g. ``torch.optim.SGD (fused)``)
``solov2_train_finished``                         gauge    1 once training (and evaluation) has finished
================================================  =======  ==================================================

Counters also expose the ``_created`` timestamp series that prometheus-client adds.
Other ranks use :class:`NullMetrics`, which has the same methods and does nothing.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, start_http_server

from solov2_contract import ERROR, ERROR_CHARS, ERROR_TYPE, RETRYABLE, TERMINATION_MESSAGE_LIMIT, Metrics

from .atomic import write_atomically
from .errors import UserError

__all__ = [
    "TERMINATION_MESSAGE_LIMIT",
    "NullMetrics",
    "TrainingMetrics",
    "failure_message",
    "write_termination_message",
]

_EVAL_IOU_TYPES = ("segm", "bbox")
_EVAL_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class TrainingMetrics:
    """Rank 0's Prometheus metrics, in a registry of their own, optionally served over HTTP.

    Args:
        port: serve ``/metrics`` on this port (0: a free port, see :attr:`port`); None: no server.
        addr: address to listen on.
    """

    def __init__(self, *, port: int | None = None, addr: str = "0.0.0.0") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.images_per_second = Gauge(
            Metrics.IMAGES_PER_SECOND, "Training images per second over all ranks", registry=r
        )
        self.loss = Gauge(Metrics.LOSS, "Last logged training loss", [Metrics.LOSS_LABEL], registry=r)
        self.learning_rate = Gauge(Metrics.LEARNING_RATE, "Learning rate of the last step", registry=r)
        self.epoch = Gauge(Metrics.EPOCH, "Current epoch (1-based)", registry=r)
        self.total_epochs = Gauge(Metrics.TOTAL_EPOCHS, "Epochs of the whole run", registry=r)
        self.iteration = Gauge(Metrics.ITERATION, "Global iterations done", registry=r)
        self.total_iterations = Gauge(
            Metrics.TOTAL_ITERATIONS, "Global iterations of the whole run", registry=r
        )
        self.eta_seconds = Gauge(Metrics.ETA_SECONDS, "Estimated seconds left", registry=r)
        self.data_wait = Gauge(
            "solov2_train_data_wait_seconds", "Seconds a step waited for data (smoothed)", registry=r
        )
        self.step_time = Gauge(
            "solov2_train_step_seconds", "Seconds per training step (smoothed)", registry=r
        )
        self.nonfinite = Counter(
            "solov2_train_nonfinite_steps", "Steps skipped because the loss was not finite", registry=r
        )
        self.dropped_positives = Counter(
            "solov2_train_dropped_positives", "Positive pairs beyond model.targets.max_positives", registry=r
        )
        self.truncated = Counter(
            "solov2_train_truncated_instances", "Instances beyond model.targets.max_instances", registry=r
        )
        self.eval_ap = Gauge(
            "solov2_eval_ap", "Final COCO average precision (0..1)", ["iou_type", "metric"], registry=r
        )
        self.info = Info("solov2_train", "Run description (value always 1)", registry=r)
        self.finished = Gauge("solov2_train_finished", "1 once training has finished", registry=r)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None
        if port is not None:
            started = start_http_server(port, addr=addr, registry=r)
            if started is None:  # prometheus-client < 0.20 gives no handle to stop the server
                raise RuntimeError("solov2 metrics need prometheus-client >= 0.20")
            self._server, self._thread = started
            self.port = int(self._server.server_address[1])

    def set_info(self, **labels: object) -> None:
        """Describe the run, e.g. ``set_info(config="solov2_r50_fpn_1x_coco", device="cuda", world_size=8)``."""
        for key in labels:
            if not _LABEL_NAME.match(key):
                raise ValueError(f"set_info: {key!r} is not a valid Prometheus label name")
        self.info.info({key: str(value) for key, value in labels.items()})

    def update(
        self,
        *,
        epoch: int,
        total_epochs: int,
        iteration: int,
        total_iterations: int,
        images_per_second: float,
        losses: Mapping[str, float],
        lr: float,
        data_wait: float,
        step_time: float,
        eta_seconds: float,
    ) -> None:
        """Record one logging interval. ``losses`` maps components (``total``, ``cls``, ``mask``; a
        ``loss_`` prefix is dropped) to values."""
        self.epoch.set(epoch)
        self.total_epochs.set(total_epochs)
        self.iteration.set(iteration)
        self.total_iterations.set(total_iterations)
        self.images_per_second.set(images_per_second)
        for name, value in losses.items():
            self.loss.labels(component=name.removeprefix("loss_")).set(float(value))
        self.learning_rate.set(lr)
        self.data_wait.set(data_wait)
        self.step_time.set(step_time)
        self.eta_seconds.set(eta_seconds)

    def add_nonfinite(self, n: int = 1) -> None:
        """Count ``n`` steps skipped for a non-finite loss."""
        if n:
            self.nonfinite.inc(n)

    def add_dropped_positives(self, n: int) -> None:
        """Count ``n`` dropped positive pairs."""
        if n:
            self.dropped_positives.inc(n)

    def add_truncated(self, n: int) -> None:
        """Count ``n`` ground-truth instances cut off by ``max_instances``."""
        if n:
            self.truncated.inc(n)

    def set_results(self, metrics: Mapping[str, float]) -> None:
        """Publish final COCO results: the dict :func:`solov2.engine.evaluate.evaluate` returns."""
        for iou_type in _EVAL_IOU_TYPES:
            for name in _EVAL_METRICS:
                value = metrics.get(f"{iou_type}_{name}")
                if value is not None:
                    self.eval_ap.labels(iou_type=iou_type, metric=name).set(float(value))

    def finish(self) -> None:
        """Mark the run finished (``solov2_train_finished`` 1)."""
        self.finished.set(1)

    def close(self) -> None:
        """Stop the HTTP server (if any) and free its port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server, self._thread = None, None


class NullMetrics:
    """:class:`TrainingMetrics`' interface doing nothing: for ranks other than 0."""

    port: int | None = None

    def set_info(self, **labels: object) -> None:
        pass

    def update(self, **kwargs: Any) -> None:
        pass

    def add_nonfinite(self, n: int = 1) -> None:
        pass

    def add_dropped_positives(self, n: int) -> None:
        pass

    def add_truncated(self, n: int) -> None:
        pass

    def set_results(self, metrics: Mapping[str, float]) -> None:
        pass

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# Termination message

_ESSENTIAL_KEYS = (
    *(f"{t}_{m}" for t in _EVAL_IOU_TYPES for m in _EVAL_METRICS),
    "epochs",
    "iterations",
    "images_per_second",
    "checkpoint",
)


def _plain(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None  # JSON has no NaN or infinity
    return str(value)


def _encode(value: Any) -> bytes:
    """Compact JSON in UTF-8; a lone surrogate (an undecodable file name in an error) becomes an escape."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "backslashreplace")


def _fit(results: Mapping[str, Any]) -> bytes:
    """Compact JSON under the limit; drops keys (essential ones last) and marks ``"truncated": true``."""
    payload = {str(k): _plain(v) for k, v in results.items()}
    data = _encode(payload)
    if len(data) < TERMINATION_MESSAGE_LIMIT:
        return data
    essential = [k for k in _ESSENTIAL_KEYS if k in payload]
    others = [k for k in payload if k not in _ESSENTIAL_KEYS]
    kept: dict[str, Any] = {"truncated": True}
    for key in essential + others:  # greedy: essential keys first, then the others while they fit
        trial = {**kept, key: payload[key]}
        if len(_encode(trial)) < TERMINATION_MESSAGE_LIMIT:
            kept = trial
    return _encode(kept)


_ERROR_BYTES = TERMINATION_MESSAGE_LIMIT - 512
"""Room for ``error`` as JSON (escapes included) in a message that also holds its class name."""


def _clip(text: str, chars: int, max_bytes: int) -> str:
    """``text`` cut to at most ``chars`` characters whose JSON string takes at most ``max_bytes``
    bytes (control characters escape to 6 bytes each, other characters take up to 4), marked with
    ``...`` where cut."""

    def fits(n: int) -> bool:
        clipped = text if n == len(text) else text[:n] + "..."
        return len(clipped) <= chars and len(_encode(clipped)) <= max_bytes

    if fits(len(text)):
        return text
    low, high = 0, min(len(text), chars)  # fits(low) holds; find the longest prefix that fits
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return text[:low] + "..."


def failure_message(exc: Exception) -> dict[str, Any]:
    """The termination message of a failed process: what went wrong, and whether a retry can help
    (``retryable`` is false for errors of the user's making: config, data, weights, divergence)."""
    text = str(exc) or type(exc).__name__
    return {
        ERROR: _clip(text, ERROR_CHARS, _ERROR_BYTES),
        ERROR_TYPE: type(exc).__name__,
        RETRYABLE: not isinstance(exc, UserError),
    }


def write_termination_message(path: str | Path, results: Mapping[str, Any]) -> None:
    """Write ``results`` (a flat mapping of str to float, int or str) as compact JSON for Kubernetes.

    Floats are rounded to 4 decimals (non-finite ones become ``null``). If the message would reach
    :data:`TERMINATION_MESSAGE_LIMIT` bytes, keys are dropped (the COCO APs, ``epochs``,
    ``iterations``, ``images_per_second`` and ``checkpoint`` are kept first) and ``"truncated": true``
    is added. The file is replaced atomically (a temporary file in the same directory, renamed over
    it); where that is impossible, e.g. ``/dev/termination-log`` bind-mounted into a container, it is
    overwritten in place.

    Raises:
        FileNotFoundError: the parent directory does not exist (the message names the path).
        OSError: the file cannot be written.
    """
    path = Path(path)
    data = _fit(results)
    if not path.parent.is_dir():
        raise FileNotFoundError(
            2, f"termination message: directory {str(path.parent)!r} does not exist", str(path)
        )
    if not (path.exists() and (not path.is_file() or os.path.ismount(path))):
        try:
            write_atomically(path, lambda f: f.write(data))
            return
        except OSError:
            pass
    with open(path, "wb") as f:  # a device, a mount point or a directory we cannot create files in
        f.write(data)
