"""One reconciliation of a SOLOv2Training: read it and its pods, :func:`~.gang.plan`, carry it out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, cast

import aiohttp
import kopf

from .departures import Departures
from .gang import Plan, invalid, plan, refused
from .kube import Kube, Refused, Rejected
from .metrics import OperatorMetrics
from .status import now_iso
from .trainer_output import parse_progress

__all__ = ["Reconciler", "read_progress"]

log = logging.getLogger(__name__)


async def read_progress(session: aiohttp.ClientSession, host: str, port: int, timeout: float) -> dict | None:
    """``status.progress`` from rank 0's metrics endpoint, or None if it has nothing (yet)."""
    host = f"[{host}]" if ":" in host else host
    try:
        async with session.get(
            f"http://{host}:{port}/metrics", timeout=aiohttp.ClientTimeout(total=timeout)
        ) as response:
            if response.status != 200:
                return None
            text = await response.text()
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        return None
    try:
        progress = parse_progress(text)
    except ValueError:
        return None
    return progress or None


def _key(training: Mapping[str, Any]) -> tuple[str, str]:
    meta = training.get("metadata") or {}
    return meta.get("namespace", "default"), meta["name"]


def _as_body(obj: Mapping[str, Any]) -> kopf.Body:
    """A resource read from the API, for kopf's ``event`` and ``adopt``: they type it as
    :class:`kopf.Body` but only read its keys (``.get``), so a plain mapping serves."""
    return cast(kopf.Body, obj)


class Reconciler:
    """Reconciles trainings one at a time each (a lock per training); requests for a training that is
    already waiting for its turn are merged."""

    def __init__(
        self, kube: Kube, metrics: OperatorMetrics, progress_timeout: float = 2.0, departure_wait: float = 1.0
    ) -> None:
        self.kube = kube
        self.metrics = metrics
        self.progress_timeout = progress_timeout
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._waiting: set[tuple[str, str]] = set()
        self._seen: set[tuple[str, str]] = set()
        self._session: aiohttp.ClientSession | None = None
        self.departures = Departures(departure_wait)
        self._later: set[asyncio.Task[None]] = set()

    def departed(self, namespace: str, training: str, pod: Mapping[str, Any]) -> None:
        """A worker's DELETED event: its last state judges it if someone else deleted it."""
        self.departures.gone((namespace, training), pod)

    async def close(self) -> None:
        for task in self._later:
            task.cancel()
        await asyncio.gather(*self._later, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _reconcile_later(self, delay: float, namespace: str, name: str) -> None:
        async def later() -> None:
            await asyncio.sleep(delay)
            try:
                await self(namespace, name)
            except Exception:
                self.metrics.handler_errors.labels(handler="resync").inc()
                log.exception("reconcile of %s/%s failed", namespace, name)

        task = asyncio.create_task(later(), name=f"solov2-reconcile-{namespace}-{name}")
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    async def __call__(
        self, namespace: str, name: str, *, read_progress: bool = False, new: Mapping[str, Any] | None = None
    ) -> str | None:
        """Reconcile one training. ``new``: its body as just announced by the API server, when it has no
        status yet (nothing of it can exist but what a previous operator created, which a create then
        finds): saves reading it and listing its pods."""
        key = (namespace, name)
        if key in self._waiting and not read_progress:
            return None
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._waiting.add(key)
        try:
            async with lock:
                self._waiting.discard(key)
                return await self._reconcile(namespace, name, read_progress, new)
        finally:
            self._waiting.discard(key)

    async def _reconcile(
        self, namespace: str, name: str, want_progress: bool, new: Mapping[str, Any] | None
    ) -> str | None:
        fresh = new is not None and not new.get("status") and (namespace, name) not in self._seen
        training = dict(new) if fresh and new is not None else await self.kube.get_training(namespace, name)
        self._seen.add((namespace, name))
        if training is None or (training.get("metadata") or {}).get("deletionTimestamp"):
            self.metrics.observe(namespace, name, None)
            self._locks.pop((namespace, name), None)
            self._seen.discard((namespace, name))
            self.departures.forget((namespace, name))
            return None
        pods = [] if fresh else await self.kube.list_workers(namespace, name)
        decided = self._plan(training, pods)
        # A worker gone without a trace: its DELETED event, which carries its last state, may still be on
        # its way (kopf batches events). Decide on the reconcile that event brings, or on a later one.
        wait = self.departures.seconds_to_wait((namespace, name), bool(decided.vanished))
        if wait:
            self._reconcile_later(wait, namespace, name)
            return (training.get("status") or {}).get("phase")
        try:
            if not await self._create(training, decided) and fresh:
                # A worker of that name exists: one an earlier operator made for this training, or one of
                # an earlier training of the same name, still stopping. Decide on what is really there.
                pods = await self.kube.list_workers(namespace, name)
                decided = self._plan(training, pods)
                await self._create(training, decided)
        except Rejected as exc:
            pods = await self.kube.list_workers(namespace, name)
            decided = invalid(training, pods, str(exc))
        except Refused as exc:
            decided = refused(training, str(exc))
        if decided.read_progress_from and want_progress:
            await self._progress(decided, decided.read_progress_from)
        if decided.annotations:
            await self.kube.patch_annotations(namespace, name, decided.annotations)
        if decided.status:
            await self.kube.patch_status(namespace, name, decided.status)
        # What the status now says is counted and posted once, whatever happens next.
        if "restarts" in decided.status:  # a status patch holds only what changed: one more restart
            cause = "disruption" if "disruptions" in decided.status else "failure"
            self.metrics.gang_restarts.labels(namespace=namespace, cause=cause).inc()
        for type_, reason, message in decided.events:
            kopf.event(_as_body(training), type=type_, reason=reason, message=message[:1024])
        status = training.get("status") or {}
        phase = decided.status.get("phase", status.get("phase"))
        self.metrics.observe(namespace, name, phase, decided.status.get("results", status.get("results")))
        # After the status: what a failed gang's pods said is kept there before they go, and a deletion
        # that fails is done again by the next reconcile, which still finds them.
        await self._delete_pods(namespace, decided.delete_pods, pods)
        if decided.delete_training:
            await self.kube.delete_training(namespace, name)
        return phase

    async def _delete_pods(self, namespace: str, names: list[str], pods: list[dict[str, Any]]) -> None:
        """Delete each pod (one failing does not stop the others); the first error is raised at the end."""
        uids = {p["metadata"]["name"]: p["metadata"].get("uid") for p in pods}
        error: Exception | None = None
        for pod in names:
            self.departures.deleting(uids.get(pod))
            try:
                await self.kube.delete_pod(namespace, pod)
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error

    def _plan(self, training: Mapping[str, Any], pods: list[dict[str, Any]]) -> Plan:
        key = _key(training)
        return plan(
            training, pods, departed=self.departures.last_states(key, (p["metadata"]["name"] for p in pods))
        )

    async def _create(self, training: Mapping[str, Any], decided: Plan) -> bool:
        """Create the plan's children; False if a worker pod of that name existed already."""
        all_new = True
        key = _key(training)
        for body in decided.create:
            body = dict(body)
            self.departures.created(key, body["metadata"]["name"])
            kopf.adopt(body, owner=_as_body(training))
            if not await self.kube.create(body) and body["kind"] == "Pod":
                all_new = False
        return all_new

    async def _progress(self, decided: Plan, host: str) -> None:
        assert decided.spec is not None
        if self._session is None:
            self._session = aiohttp.ClientSession()
        progress = await read_progress(self._session, host, decided.spec.metrics_port, self.progress_timeout)
        if progress is None:
            self.metrics.progress_read_failures.inc()
            return
        decided.status["progress"] = {**progress, "updatedAt": now_iso()}
