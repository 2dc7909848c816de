"""Thin kopf handlers: every trigger reconciles the training it concerns (see :mod:`.reconcile`).

Triggers (all level-based, nothing is stored by kopf): a SOLOv2Training seen for the first time (created,
or found when the operator starts) or with a changed spec; a worker pod whose phase or state changed or
that went away; and a resync loop over all trainings, which also reads rank 0's progress.
"""

from __future__ import annotations

import asyncio
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


def _counted(
    metrics: OperatorMetrics, handler: str, fn: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    metrics.count_errors_of(handler)

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

    known: set[tuple[str, str]] = set()
    tasks: list[asyncio.Task[None]] = []
    metrics.count_errors_of("resync")

    async def resync() -> None:
        """Every ``resync_seconds``: reconcile every known training and read its progress. (Not a
        kopf timer: those put a finalizer on every training.)"""
        limit = asyncio.Semaphore(8)

        async def one(key: tuple[str, str]) -> None:
            async with limit:
                try:
                    await state["reconcile"](*key, read_progress=True)
                except Exception:
                    metrics.handler_errors.labels(handler="resync").inc()
                    log.exception("resync of %s/%s failed", *key)

        while True:
            await asyncio.sleep(config.resync_seconds)
            await asyncio.gather(*(one(key) for key in sorted(known)))

    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.INFO
        kube = config.kube or Kube(load_api_client())
        state["reconcile"] = Reconciler(kube, metrics, config.progress_timeout)
        if config.metrics_port is not None:
            metrics.serve(config.metrics_port)

    async def cleanup(**_: Any) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if "reconcile" in state:
            await state["reconcile"].close()

    async def training_event(
        namespace: str, name: str, type: str | None, body: kopf.Body, status: kopf.Status, **_: Any
    ) -> None:
        """Level-triggered: a new training (or one found at start-up) and a changed spec reconcile at
        once; the operator's own status writes do not."""
        if type == "DELETED":
            known.discard((namespace, name))
            metrics.observe(namespace, name, None)
            return
        known.add((namespace, name))
        if not tasks:  # started from a handler: kopf's event posting needs the context handlers run in
            tasks.append(asyncio.create_task(resync(), name="solov2-resync"))
        if type in (None, "ADDED") or body.metadata.get("generation") != status.get("observedGeneration"):
            await state["reconcile"](namespace, name, new=body if type == "ADDED" else None)

    seen: dict[str, tuple[Any, ...]] = {}

    async def pod_event(
        namespace: str, labels: dict[str, str], type: str | None, body: kopf.Body, **_: Any
    ) -> None:
        """A worker that changed phase, readiness or state, or went away, reconciles its training."""
        training = training_of(labels)
        uid = body.metadata.uid
        if not training or uid is None:
            return
        pod_status = body.get("status") or {}
        key = (
            pod_status.get("phase"),
            bool(body.metadata.get("deletionTimestamp")),
            repr(pod_status.get("conditions")),
            repr([c.get("state", {}).keys() for c in pod_status.get("containerStatuses") or ()]),
        )
        if type == "DELETED":
            seen.pop(uid, None)
            state["reconcile"].departed(namespace, training, dict(body))
        elif seen.get(uid) == key or pod_status.get("phase") is None:
            seen[uid] = key
            return  # nothing the gang's state depends on changed (or the pod was just created)
        else:
            seen[uid] = key
        await state["reconcile"](namespace, training)

    kopf.on.startup(registry=registry)(startup)
    kopf.on.cleanup(registry=registry)(cleanup)
    kopf.on.event(*resource, registry=registry, id="training")(_counted(metrics, "training", training_event))
    kopf.on.event("v1", "pods", labels={LABEL_NAME: APP_NAME}, registry=registry, id="pod")(
        _counted(metrics, "pod", pod_event)
    )
    return config
