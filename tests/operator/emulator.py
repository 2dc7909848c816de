"""kmock's KubernetesEmulator with the fixes the operator's tests need, and a recorder of API requests.

kmock 0.8 keeps (and searches) every request ever served; stamps no uid, resourceVersion, generation
or creationTimestamp; answers a JSON Patch that cannot apply (a failed ``test``, a path that is not
there) with 500 instead of 422; ignores ``labelSelector`` (the operator filters by labels itself);
applies a patch by the body's type, not its Content-Type (refused here where they disagree); collects
no garbage (tests assert owner references instead); cannot parse a cluster-wide
``GET /api/v1/namespaces`` (kopf's namespace scanning is switched off); and serves only declared
resources.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import jsonpatch
import kmock
import yaml

ROOT = Path(__file__).resolve().parents[2]
TRAININGS = "solov2.io/v1alpha1/solov2trainings"
PODS = "v1/pods"
SERVICES = "v1/services"
PODGROUPS = "scheduling.volcano.sh/v1beta1/podgroups"
OPERATOR_AGENTS = ("kopf/", "solov2-operator/")
"""User-Agent prefixes of the operator's requests (the tests' own client sends another)."""
RECORDED = Path(__file__).with_name("recorded_api_requests.json")
_JSON_PATCH = "application/json-patch+json"
_VERBS = {
    "list": "list",
    "watch": "watch",
    "fetch": "get",
    "create": "create",
    "update": "patch",
    "delete": "delete",
}


class Emulator(kmock.KubernetesEmulator):
    """Stamps metadata like an API server does and answers a JSON Patch that cannot apply with 422."""

    _counter = itertools.count(1)
    api_requests: set[tuple[str, str, str, str, bool]]

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.api_requests = set()
        self._in_flight: set[int] = set()
        self.reject: dict[str, tuple[int, str]] = {}
        """Names whose create is refused with this HTTP status (422: invalid, 403: forbidden by a quota or
        an admission policy, 404: an unknown resource type) and message."""
        self.refused: collections.Counter[str] = collections.Counter()
        """How many creates of each name in ``reject`` were refused."""
        self.training_reads: collections.Counter[str] = collections.Counter()
        """How many times the operator read each training (once per reconcile)."""
        crd = yaml.safe_load((ROOT / "crds" / "solov2trainings.yaml").read_text())
        names = crd["spec"]["names"]
        self.resources[TRAININGS] = kmock.ResourceInfo(
            kind=names["kind"],
            singular=names["singular"],
            namespaced=True,
            shortnames=names.get("shortNames", []),
            categories=names.get("categories", []),
            verbs=["get", "list", "watch", "create", "update", "patch", "delete"],
            subresources=["status"],
        )
        for key, kind in (
            (PODS, "Pod"),
            (SERVICES, "Service"),
            ("v1/events", "Event"),
            (PODGROUPS, "PodGroup"),
        ):
            self.resources[key] = kmock.ResourceInfo(
                kind=kind, namespaced=True, verbs=["get", "list", "watch", "create", "patch", "delete"]
            )
        self.resources["v1/namespaces"] = kmock.ResourceInfo(
            kind="Namespace", namespaced=False, verbs=["get", "list"]
        )

    def _stamp(self, request: kmock.Request) -> None:
        version = str(next(self._counter))
        data = request.data
        if request.action == kmock.action.CREATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            meta["resourceVersion"] = version
            meta.setdefault("generation", 1)
            if request.namespace and not meta.get("namespace"):
                meta["namespace"] = request.namespace
        elif request.action == kmock.action.UPDATE and request.name is not None:
            current = self._current(request)
            generation = None
            if current is not None:
                generation = (current.get("metadata") or {}).get("generation", 1)
            if isinstance(data, dict):
                meta = data.setdefault("metadata", {}) if data.get("metadata") is not None else None
                if meta is None:
                    data["metadata"] = meta = {}
                meta["resourceVersion"] = version
                if "spec" in data and not request.subresource and generation is not None:
                    meta["generation"] = generation + 1
            elif isinstance(data, list):
                data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})

    async def _handle(self, request: kmock.Request) -> Any:
        # kmock matches every request against its whole request history (the cost grows with each
        # request served); nothing here reads that history, so it keeps only the requests in flight.
        self._in_flight.add(id(request))
        self._requests[:] = [r for r in self._requests if id(r) in self._in_flight]
        try:
            return await self._handle_stamped(request)
        finally:
            self._in_flight.discard(id(request))

    async def _handle_stamped(self, request: kmock.Request) -> Any:
        if request.resource is not None and request.action == kmock.action.CREATE:
            name = ((request.data or {}).get("metadata") or {}).get("name")
            if name in self.reject:  # as validation, an admission webhook or a quota would
                self._record(request)
                self.refused[name] += 1
                code, message = self.reject[name]
                reason = {403: "Forbidden", 404: "NotFound", 422: "Invalid"}[code]
                return await self._render_error(
                    kmock.KubernetesError(status=code, reason=reason, message=message)
                )
        if request.resource is not None and request.action == kmock.action.UPDATE:
            # kmock applies a list as a JSON Patch and a map as a merge patch, whatever the request's
            # Content-Type says; an API server goes by the Content-Type.
            json_patch = str(request.headers.get("Content-Type", "")).startswith(_JSON_PATCH)
            if json_patch != isinstance(request.data, list):
                return await self._render_error(
                    kmock.KubernetesError(
                        status=415, reason="UnsupportedMediaType", message="body and Content-Type disagree"
                    )
                )
        if request.resource is not None:
            self._record(request)
            self._stamp(request)
            if request.action == kmock.action.UPDATE and isinstance(request.data, list):
                current = self._current(request)
                if current is not None:
                    try:
                        jsonpatch.apply_patch(current.raw, request.data)
                    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                        return await self._render_error(
                            kmock.KubernetesError(status=422, reason="Invalid", message=str(exc))
                        )
        return await super()._handle(request)

    def _current(self, request: kmock.Request) -> Any:
        try:
            current = self.objects[request.resource, request.namespace, request.name]
        except (KeyError, LookupError):
            return None
        return None if current.deleted else current

    def _record(self, request: kmock.Request) -> None:
        resource = request.resource
        if resource is None or request.action is None:
            return
        verb = _VERBS.get(str(request.action.value).lower())
        if verb is None or not resource.plural:  # discovery (/api/v1, /apis/<group>/<version>): no RBAC
            return
        agent = str(request.headers.get("User-Agent", ""))
        if agent.startswith(OPERATOR_AGENTS):
            if verb == "get" and resource.plural == TRAININGS.split("/")[-1] and not request.subresource:
                self.training_reads[str(request.name)] += 1
            self.api_requests.add(
                (
                    verb,
                    resource.group or "",
                    resource.plural or "",
                    request.subresource or "",
                    request.namespace is not None,
                )
            )

    def operator_requests(self) -> set[tuple[str, str, str, str, bool]]:
        """(verb, group, resource, subresource, namespaced) of every request kopf or the operator made."""
        return set(self.api_requests)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextlib.asynccontextmanager
async def serve(cls: type[Emulator] = Emulator) -> AsyncIterator[tuple[Emulator, str]]:
    """A running emulator with namespace ``default`` and the CRD declared; yields it and its URL."""
    async with cls() as emulator, kmock.Server(emulator) as server:
        emulator.objects["v1/namespaces", None, "default"] = {
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"},
        }  # fmt: skip
        yield emulator, str(server.url).rstrip("/")


def recorded(requests: set[tuple[str, str, str, str, bool]]) -> list[dict[str, Any]]:
    return [
        {"verb": v, "group": g, "resource": r, "subresource": s, "namespaced": n}
        for v, g, r, s, n in sorted(requests)
    ]


def objects_of(emulator: Emulator, resource: str, namespace: str = "default") -> dict[str, Mapping[str, Any]]:
    out = {}
    for key, obj in list(emulator.objects.items()):
        res, ns, name = key
        if _same(res, resource) and ns == namespace and not obj.deleted:
            out[name] = json.loads(json.dumps(obj.raw))
    return out


def versions_of(emulator: Emulator, resource: str, name: str, namespace: str = "default") -> list[Any]:
    """Every state object ``name`` has had, oldest first (None where it was deleted)."""
    for (res, ns, obj_name), obj in list(emulator.objects.items()):
        if _same(res, resource) and ns == namespace and obj_name == name:
            return [None if v is None else json.loads(json.dumps(v.raw)) for v in obj.history]
    return []


def _same(res: Any, key: str) -> bool:
    parts = key.split("/")
    group, version, plural = ("", *parts) if len(parts) == 2 else parts
    return (res.group or "") == group and res.version == version and res.plural == plural
