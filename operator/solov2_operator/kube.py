"""The few API calls the operator makes itself, with the official client (run in threads).

kopf watches and patches SOLOv2Trainings and posts events; everything else goes through here.
Bodies are plain dicts in the API's own (camelCase) shape, as the builders return them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, NoReturn, cast

from kubernetes import config
from kubernetes.client import ApiClient, Configuration, CoreV1Api, CustomObjectsApi, V1Pod, V1Service
from kubernetes.client.exceptions import ApiException

from . import __version__
from .manifests import LABEL_NAME, LABEL_TRAINING, PODGROUP_API, selector

__all__ = [
    "GROUP",
    "PLURAL",
    "VERSION",
    "Kube",
    "Refused",
    "Rejected",
    "load_api_client",
    "podgroup_spec_patch",
]

GROUP, VERSION, PLURAL = "solov2.io", "v1alpha1", "solov2trainings"
_MERGE_PATCH = "application/merge-patch+json"
_JSON_PATCH = "application/json-patch+json"


class Rejected(Exception):
    """The API server found a child built from the spec invalid (HTTP 400 or 422): it never will accept it."""


class Refused(Exception):
    """The API server refused to create a child for a reason that may pass (HTTP 403: a ResourceQuota, an
    admission policy, missing RBAC; 404: a resource type the cluster lacks, as Volcano's PodGroup)."""


def load_api_client() -> ApiClient:
    """An API client for the cluster the operator runs in, else the current kubeconfig context."""
    configuration = Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    return ApiClient(configuration)


def _loads(response: Any) -> Any:
    return json.loads(response.data)


class Kube:
    """Async wrappers over :class:`CoreV1Api` and :class:`CustomObjectsApi`."""

    def __init__(self, api_client: ApiClient) -> None:
        self.api_client = api_client
        api_client.user_agent = f"solov2-operator/{__version__}"
        self.core = CoreV1Api(api_client)
        self.custom = CustomObjectsApi(api_client)

    async def get_training(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            response = await asyncio.to_thread(
                self.custom.get_namespaced_custom_object,
                GROUP, VERSION, namespace, PLURAL, name, _preload_content=False,
            )  # fmt: skip
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return _loads(response)

    async def list_workers(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The pods of training ``name`` (filtered here too, in case a server ignores the selector)."""
        wanted = selector(name)
        label_selector = ",".join(f"{k}={v}" for k, v in wanted.items())
        response = await asyncio.to_thread(
            self.core.list_namespaced_pod, namespace, label_selector=label_selector, _preload_content=False
        )
        pods = _loads(response).get("items") or []
        return [
            p
            for p in pods
            if all(((p.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]

    async def create(self, body: dict[str, Any]) -> bool:
        """Create a child; False if it exists already. An existing Service or PodGroup is brought to
        ``body`` (labels, owner, spec: ports or ``minMember`` may have changed since it was made); an
        existing pod is left as it is. Raises :class:`Rejected` on 400/422, :class:`Refused` on 403/404.

        The client's methods are typed for its models (``V1Pod``, ...), but they validate their
        arguments with pydantic, which turns an API-shaped dict into the model: hence the casts.
        """
        namespace = body["metadata"]["namespace"]
        kind = body["kind"]
        try:
            if kind == "Pod":
                await asyncio.to_thread(
                    self.core.create_namespaced_pod, namespace, cast(V1Pod, body), _preload_content=False
                )
            elif kind == "Service":
                await asyncio.to_thread(
                    self.core.create_namespaced_service,
                    namespace,
                    cast(V1Service, body),
                    _preload_content=False,
                )
            elif kind == "PodGroup":
                group, version, plural = PODGROUP_API
                await asyncio.to_thread(
                    self.custom.create_namespaced_custom_object,
                    group, version, namespace, plural, body, _preload_content=False,
                )  # fmt: skip
            else:
                raise ValueError(f"cannot create a {kind}")
        except ApiException as exc:
            if exc.status != 409:
                _raise_refusal(exc, body)
            if kind != "Pod":
                try:
                    await self._update(body)
                except ApiException as update_exc:  # e.g. a Service of that name that is not headless
                    _raise_refusal(update_exc, body)
            return False
        return True

    async def _update(self, body: dict[str, Any]) -> None:
        """Bring the existing Service or PodGroup of ``body``'s name (an earlier gang's, or an earlier
        training's of the same name that the garbage collector would otherwise delete under the new one)
        to ``body``: its labels and owner are merged in, and its spec updated in one request."""
        meta = body["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        metadata = {"labels": meta.get("labels"), "ownerReferences": meta.get("ownerReferences")}
        if body["kind"] == "Service":
            await asyncio.to_thread(
                self.core.patch_namespaced_service, name, namespace,
                {"metadata": metadata, "spec": body["spec"]},
                _content_type=_MERGE_PATCH, _preload_content=False,
            )  # fmt: skip
            return
        group, version, plural = PODGROUP_API
        # The merge patch's empty spec creates one where a PodGroup has none, for the JSON Patch to add to.
        for patch, content_type in (
            ({"metadata": metadata, "spec": {}}, _MERGE_PATCH),
            (podgroup_spec_patch(body["spec"]), _JSON_PATCH),
        ):
            await asyncio.to_thread(
                self.custom.patch_namespaced_custom_object,
                group, version, namespace, plural, name, patch,
                _content_type=content_type, _preload_content=False,
            )  # fmt: skip

    async def delete_pod(self, namespace: str, name: str) -> None:
        try:
            await asyncio.to_thread(self.core.delete_namespaced_pod, name, namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge ``status`` into the training's; nothing if it was deleted meanwhile."""
        await self._patch_training(namespace, name, {"status": dict(status)}, status=True)

    async def patch_annotations(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        """Merge ``annotations`` into the training's; nothing if it was deleted meanwhile."""
        await self._patch_training(namespace, name, {"metadata": {"annotations": dict(annotations)}})

    async def _patch_training(
        self, namespace: str, name: str, patch: dict[str, Any], status: bool = False
    ) -> None:
        method = (
            self.custom.patch_namespaced_custom_object_status
            if status
            else self.custom.patch_namespaced_custom_object
        )
        try:
            await asyncio.to_thread(
                method, GROUP, VERSION, namespace, PLURAL, name, patch,
                _content_type=_MERGE_PATCH, _preload_content=False,
            )  # fmt: skip
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def delete_training(self, namespace: str, name: str) -> None:
        try:
            await asyncio.to_thread(
                self.custom.delete_namespaced_custom_object,
                GROUP, VERSION, namespace, PLURAL, name, _preload_content=False,
            )  # fmt: skip
        except ApiException as exc:
            if exc.status != 404:
                raise


def podgroup_spec_patch(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A JSON Patch that gives a PodGroup the members of ``spec``, ``minResources`` replaced whole.

    Volcano admits a PodGroup to its queue when ``minResources`` fit, so the update is one atomic
    request: a merge patch would keep a resource the spec no longer requests, and clearing the map
    first would leave the PodGroup for a moment without any. Without ``minResources`` in ``spec``, an
    ``add`` (of an empty map, which replaces any) followed by a ``remove`` drops it whether it was
    there or not. A ``queue`` or ``priorityClassName`` the spec does not name is left as it is (Volcano's
    admission webhook defaults the queue).
    """
    ops = [{"op": "add", "path": f"/spec/{key}", "value": value} for key, value in spec.items()]
    if "minResources" not in spec:
        ops += [
            {"op": "add", "path": "/spec/minResources", "value": {}},
            {"op": "remove", "path": "/spec/minResources"},
        ]
    return ops


def _raise_refusal(exc: ApiException, body: Mapping[str, Any]) -> NoReturn:
    """Raise what a refused create or update of ``body`` means: :class:`Rejected` (400, 422),
    :class:`Refused` (403, 404), else ``exc`` itself."""
    what = f"{body['kind']} {body['metadata']['name']}: {_reason(exc)}"
    if exc.status in (400, 422):
        raise Rejected(what) from exc
    if exc.status in (403, 404):
        raise Refused(what) from exc
    raise exc


def _reason(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except ValueError:
        return str(exc.reason)


def training_of(pod_labels: Mapping[str, str] | None) -> str | None:
    """The training a worker pod belongs to, from its labels."""
    labels = pod_labels or {}
    return labels.get(LABEL_TRAINING) if labels.get(LABEL_NAME) else None
