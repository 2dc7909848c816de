"""The operator run in-process (``kopf.operator``) against the emulated API server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf
import pytest
import pytest_asyncio
from kubernetes.client import ApiClient, Configuration, CoreV1Api, CustomObjectsApi

from solov2_operator.handlers import OperatorConfig, register
from solov2_operator.kube import Kube

from .emulator import PODS, RECORDED, TRAININGS, Emulator, objects_of, recorded, serve

ALL_REQUESTS: set[tuple[str, str, str, str, bool]] = set()


@dataclass
class Cluster:
    emulator: Emulator
    url: str
    config: OperatorConfig
    core: CoreV1Api
    custom: CustomObjectsApi

    def training(self, name: str) -> dict[str, Any]:
        return objects_of(self.emulator, TRAININGS)[name]

    def pods(self, name: str | None = None) -> dict[str, dict[str, Any]]:
        pods = objects_of(self.emulator, PODS)
        return {n: p for n, p in pods.items() if name is None or n.startswith(f"{name}-worker-")}

    async def create(
        self, name: str, spec: Mapping[str, Any], labels: Mapping[str, str] | None = None
    ) -> None:
        body = {
            "apiVersion": "solov2.io/v1alpha1",
            "kind": "SOLOv2Training",
            "metadata": {"name": name, **({"labels": dict(labels)} if labels else {})},
            "spec": spec,
        }
        await asyncio.to_thread(
            self.custom.create_namespaced_custom_object,
            "solov2.io",
            "v1alpha1",
            "default",
            "solov2trainings",
            body,
        )

    async def patch_spec(self, name: str, spec: Mapping[str, Any]) -> None:
        await asyncio.to_thread(
            self.custom.patch_namespaced_custom_object,
            "solov2.io", "v1alpha1", "default", "solov2trainings", name, {"spec": dict(spec)},
            _content_type="application/merge-patch+json",
        )  # fmt: skip

    async def delete(self, name: str) -> None:
        await asyncio.to_thread(
            self.custom.delete_namespaced_custom_object,
            "solov2.io",
            "v1alpha1",
            "default",
            "solov2trainings",
            name,
        )

    async def set_pod(
        self,
        pod: str,
        phase: str,
        waiting: Mapping[str, str] | None = None,
        disruption: str | None = None,
        **terminated: Any,
    ) -> None:
        """Play the kubelet: a pod's phase, and its container's waiting or terminated state if given;
        ``disruption`` plays the scheduler or the eviction API (a ``DisruptionTarget`` reason)."""
        status: dict[str, Any] = {"phase": phase, "podIP": terminated.pop("pod_ip", "127.0.0.1")}
        ready = phase == "Running"
        status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
        if disruption:
            status["conditions"].append({"type": "DisruptionTarget", "status": "True", "reason": disruption})
        container = {"name": "trainer", "image": "solov2", "imageID": "solov2@sha256:0", "restartCount": 0}
        if terminated:
            status["containerStatuses"] = [{**container, "ready": False, "state": {"terminated": terminated}}]
        elif waiting:
            status["containerStatuses"] = [{**container, "ready": False, "state": {"waiting": dict(waiting)}}]
        elif phase == "Running":
            status["containerStatuses"] = [{**container, "ready": True, "state": {"running": {}}}]
        await asyncio.to_thread(
            self.core.patch_namespaced_pod_status, pod, "default", {"status": status},
            _content_type="application/merge-patch+json", _preload_content=False,
        )  # fmt: skip

    async def reconciled(self, name: str, times: int = 3) -> None:
        """Wait until the operator has reconciled training ``name`` about ``times`` more times (it reads
        the training at the start of each): what "nothing changes on resync" is checked after."""
        start = self.emulator.training_reads[name]
        await self.wait(
            lambda: self.emulator.training_reads[name] >= start + times,
            message=f"{times} reconciles of {name}",
        )

    async def wait(self, what: Callable[[], Any], timeout: float = 15.0, message: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(KeyError, IndexError, TypeError):
                value = what()
                if value:
                    return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {message or what}")
            await asyncio.sleep(0.05)

    def phase(self, name: str) -> str | None:
        return (self.training(name).get("status") or {}).get("phase")

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        (cond,) = [c for c in self.training(name)["status"]["conditions"] if c["type"] == type_]
        return cond

    def _events_about(self, name: str) -> list[dict[str, Any]]:
        events = objects_of(self.emulator, "v1/events").values()
        return [e for e in events if (e.get("involvedObject") or {}).get("name") == name]

    def events(self, name: str) -> list[str]:
        return [e.get("reason", "") for e in self._events_about(name)]

    def event_messages(self, name: str, reason: str) -> list[str]:
        """Messages of the events with ``reason`` posted about training ``name``."""
        return [e.get("message", "") for e in self._events_about(name) if e.get("reason") == reason]


@contextlib.asynccontextmanager
async def run_operator(emulator: Emulator, url: str, resync: float = 0.2) -> AsyncIterator[OperatorConfig]:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, insecure=True, default_namespace="default")

    config = register(
        registry,
        OperatorConfig(
            resync_seconds=resync, progress_timeout=0.5, kube=Kube(ApiClient(Configuration(host=url)))
        ),
    )
    settings = kopf.OperatorSettings()
    settings.watching.reconnect_backoff = 0.1
    settings.scanning.disabled = True  # kmock 0.8 cannot parse a cluster-wide GET /api/v1/namespaces
    settings.posting.level = 20
    # kopf cancels every task created after it started when it stops, so it gets a thread and an
    # event loop of its own (as kopf.testing.KopfRunner does), and the tests' loop is left alone.
    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(
                kopf.operator(
                    registry=registry, settings=settings, clusterwide=True, standalone=True,
                    stop_flag=stop, ready_flag=ready,
                )
            )  # fmt: skip
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=target, name="operator", daemon=True)
    thread.start()
    assert await asyncio.to_thread(ready.wait, 20), f"the operator did not start: {errors}"
    try:
        yield config
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 20)
        assert not thread.is_alive(), "the operator did not stop"
        assert not errors, errors


@pytest_asyncio.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with serve() as (emulator, url):
        api = ApiClient(Configuration(host=url))
        async with run_operator(emulator, url) as config:
            yield Cluster(emulator, url, config, CoreV1Api(api), CustomObjectsApi(api))
            errors = {
                s.labels["handler"]: s.value
                for m in config.metrics.registry.collect() if m.name == "solov2_operator_handler_errors"
                for s in m.samples if s.name.endswith("_total") and s.value
            }  # fmt: skip
            assert not errors, f"operator handlers raised: {errors}"
        made = emulator.operator_requests()
        ALL_REQUESTS.update(made)
        if os.environ.get("SOLOV2_RECORD_API_REQUESTS") != "1":
            committed = {tuple(r.values()) for r in json.loads(RECORDED.read_text())}
            unlisted = recorded(made - committed)
            assert not unlisted, (
                f"the operator made API requests missing from {RECORDED.name} (the chart's RBAC is checked "
                f"against it; rerun with SOLOV2_RECORD_API_REQUESTS=1 to rewrite it): {unlisted}"
            )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With SOLOV2_RECORD_API_REQUESTS=1, rewrite the committed list of the operator's API requests."""
    if ALL_REQUESTS and os.environ.get("SOLOV2_RECORD_API_REQUESTS") == "1":
        RECORDED.write_text(json.dumps(recorded(ALL_REQUESTS), indent=1) + "\n")
