"""What the operator remembers of worker pods that went away, between reconciles (in memory: an operator
that restarts forgets it, and falls back to judging a missing worker as "pod deleted").

A pod deleted by someone else (a drain, the pod garbage collector after a lost node, a user) leaves the
pod list at once; its last state (exit code, termination message, ``DisruptionTarget``) arrives only with
its DELETED watch event. :class:`Departures` keeps that state until a pod of the same name is created
again, ignores the pods the operator deleted itself, and tells a reconcile that finds a worker gone
without any trace to wait a moment for that event.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["Departures"]

Key = tuple[str, str]
"""(namespace, training name)."""


class Departures:
    def __init__(self, wait: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.wait = wait
        self._clock = clock
        self._last: dict[Key, dict[str, Mapping[str, Any]]] = {}
        self._ours: dict[str, float] = {}  # uid of a pod this operator deleted -> when
        self._waiting_since: dict[Key, float] = {}

    def deleting(self, uid: str | None) -> None:
        """The operator deletes this pod: its DELETED event is no news. Entries whose event never came
        are dropped after ten minutes."""
        now = self._clock()
        self._ours = {u: t for u, t in self._ours.items() if now - t < 600}
        if uid:
            self._ours[uid] = now

    def gone(self, key: Key, pod: Mapping[str, Any]) -> None:
        """A worker's DELETED event, with its last state."""
        meta = pod.get("metadata") or {}
        if self._ours.pop(meta.get("uid") or "", None) is None:
            self._last.setdefault(key, {})[meta.get("name", "")] = pod

    def last_states(self, key: Key, listed: Iterable[str]) -> list[Mapping[str, Any]]:
        """The remembered workers of ``key`` whose name is not among the ``listed`` pods."""
        names = set(listed)
        return [pod for name, pod in self._last.get(key, {}).items() if name not in names]

    def created(self, key: Key, name: str) -> None:
        """A pod of that name was created: the name belongs to a new worker now."""
        self._last.get(key, {}).pop(name, None)

    def seconds_to_wait(self, key: Key, vanished: bool) -> float:
        """How long a reconcile that found a worker gone without a trace (``vanished``) should still
        wait for its DELETED event before deciding; 0: decide now."""
        if not vanished:
            self._waiting_since.pop(key, None)
            return 0.0
        left = self.wait - (self._clock() - self._waiting_since.setdefault(key, self._clock()))
        if left <= 0:
            self._waiting_since.pop(key, None)
        return max(left, 0.0)

    def forget(self, key: Key) -> None:
        """The training is gone."""
        self._last.pop(key, None)
        self._waiting_since.pop(key, None)
