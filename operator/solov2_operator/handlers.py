"""Thin kopf handlers: every trigger reconciles the training it concerns (see :mod:`.reconcile`).

Triggers: a SOLOv2Training created, resumed after an operator restart or changed; a worker pod's event;
and a resync timer per training, which also reads rank 0's progress.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import kopf

from .kube import GROUP, PLURAL, VERSION, Kube, load_api_client, training_of
from .manifests import APP_NAME, LABEL_NAME
from .metrics import OperatorMetrics
from .reconcile import Reconciler

__all__ = ["OperatorConfig", "register"]

log = logging.getLogger(__name__)


@dataclass
class OperatorConfig:
    """What the handlers need besides kopf's own settings."""

    resync_seconds: float = 10.0
    """Interval of the per-training timer (reconcile and read progress)."""
    progress_timeout: float = 2.0
    """Seconds allowed for one read of rank 0's metrics."""
    metrics_port: int | None = None
    """Serve the operator's Prometheus metrics here (None: not served)."""
    kube: Kube | None = None
    """API access; None loads the in-cluster config, else the kubeconfig."""
    metrics: OperatorMetrics | None = None


def _counted(metrics: OperatorMetrics, handler: str, fn: Callable[..., Awaitable[Any]]):
    @functools.wraps(fn)
    async def wrapper(**kwargs: Any) -> Any:
        try:
            return await fn(**kwargs)
        except Exception:
            metrics.handler_errors.labels(handler=handler).inc()
            raise

    return wrapper


def register(registry: kopf.OperatorRegistry, config: OperatorConfig | None = None) -> OperatorConfig:
    """Register the operator's handlers on ``registry``; returns the (filled-in) config."""
    config = config or OperatorConfig()
    metrics = config.metrics = config.metrics or OperatorMetrics()
    state: dict[str, Reconciler] = {}
    resource = (GROUP, VERSION, PLURAL)

    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.INFO
        kube = config.kube or Kube(load_api_client())
        state["reconcile"] = Reconciler(kube, metrics, config.progress_timeout)
        if config.metrics_port is not None:
            metrics.serve(config.metrics_port)

    async def cleanup(**_: Any) -> None:
        if "reconcile" in state:
            await state["reconcile"].close()

    async def changed(namespace: str, name: str, **_: Any) -> None:
        await state["reconcile"](namespace, name)

    async def tick(namespace: str, name: str, **_: Any) -> None:
        await state["reconcile"](namespace, name, read_progress=True)

    async def pod_event(namespace: str, labels: dict[str, str], type: str | None, **_: Any) -> None:
        training = training_of(labels)
        if training and type is not None:
            await state["reconcile"](namespace, training)

    async def training_event(namespace: str, name: str, type: str | None, **_: Any) -> None:
        if type == "DELETED":
            metrics.observe(namespace, name, None)

    kopf.on.startup(registry=registry)(startup)
    kopf.on.cleanup(registry=registry)(cleanup)
    for decorator, handler_id in (
        (kopf.on.create(*resource, registry=registry, id="create"), "create"),
        (kopf.on.resume(*resource, registry=registry, id="resume"), "resume"),
        (kopf.on.update(*resource, field="spec", registry=registry, id="update"), "update"),
    ):
        decorator(_counted(metrics, handler_id, changed))
    kopf.timer(*resource, interval=config.resync_seconds, registry=registry, id="resync")(
        _counted(metrics, "resync", tick)
    )
    kopf.on.event(*resource, registry=registry, id="training-event")(
        _counted(metrics, "training", training_event)
    )
    kopf.on.event("v1", "pods", labels={LABEL_NAME: APP_NAME}, registry=registry, id="pod-event")(
        _counted(metrics, "pod", pod_event)
    )
    return config
