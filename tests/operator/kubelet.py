"""A small test "kubelet": runs the emulator's pods as local processes and reports their status.

Each new pod's container command and args run with the pod's env; worker 0's DNS name becomes
127.0.0.1, volume mount paths become folders under ``root`` (a claim is one folder shared by every
pod, an emptyDir one per pod), and the termination log is a file per pod whose content is reported as
the container's ``terminated.message``.

A pod's processes are found by a marker in their environment, as a container's cgroup would hold
them: torchrun starts each trainer in a session of its own, and data-loading workers leave the
trainer's process group, so one process group is not the pod. A deleted pod's first process
(torchrun, as ``exec`` leaves it) gets SIGTERM; once it exits, or after ``grace`` seconds, every
process left in the pod gets SIGKILL, and the pod counts as stopped when none is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException

from .emulator import PODS, Emulator, objects_of

VENV_BIN = str(Path(sys.executable).parent)
POD_MARKER = "SOLOV2_TEST_KUBELET_POD_UID"


def pod_processes(uid: str) -> list[int]:
    """PIDs of the live processes whose environment carries pod ``uid``'s marker."""
    marker = f"{POD_MARKER}={uid}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours
            continue
        if marker in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


@dataclass
class _Running:
    uid: str
    process: asyncio.subprocess.Process
    termination_log: Path
    reported: bool = False


class Kubelet:
    def __init__(self, emulator: Emulator, core: CoreV1Api, root: Path, grace: float = 20.0) -> None:
        self.emulator, self.core, self.root, self.grace = emulator, core, root, grace
        self.running: dict[str, _Running] = {}
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> Kubelet:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for name in list(self.running):
            await self._stop(name)

    async def kill(self, pod: str) -> None:
        """SIGKILL every process of a worker pod, as an OOM kill or a node failure would; returns once
        they are gone (the kubelet's loop then reports the exit)."""
        await _sigkill(pod, self.running[pod])

    async def _loop(self) -> None:
        while True:
            await self._step()
            await asyncio.sleep(0.1)

    async def _step(self) -> None:
        """One pass over the pods. A stop may take seconds (a worker writing its checkpoint), in which
        the operator may have deleted more pods or created new ones of the same names: the pass ends
        after it, and the next one works from a fresh list."""
        pods = objects_of(self.emulator, PODS)
        for name, run in list(self.running.items()):
            pod = pods.get(name)
            if pod is None or pod["metadata"]["uid"] != run.uid:
                await self._stop(name)
                return
            if run.process.returncode is not None and not run.reported:
                await self._report_exit(name, run)
        for name, pod in pods.items():
            if name not in self.running and not (pod.get("status") or {}).get("phase"):
                await self._start(name, pod)

    def _mounts(self, name: str, pod: Mapping[str, Any]) -> dict[str, Path]:
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or ()}
        mounts: dict[str, Path] = {}
        for mount in pod["spec"]["containers"][0].get("volumeMounts") or ():
            volume = volumes[mount["name"]]
            if mount["mountPath"] == "/dev/shm":
                continue
            if "persistentVolumeClaim" in volume:
                host = self.root / "claims" / volume["persistentVolumeClaim"]["claimName"]
            else:
                host = self.root / "pods" / name / mount["name"]
            host.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = host
        return mounts

    async def _start(self, name: str, pod: Mapping[str, Any]) -> None:
        container = pod["spec"]["containers"][0]
        mounts = self._mounts(name, pod)
        log = self.root / "pods" / name / "termination-log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        env = {"PATH": f"{VENV_BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1", "HOME": str(self.root)}
        env[POD_MARKER] = pod["metadata"]["uid"]
        for entry in container.get("env") or ():
            env[entry["name"]] = "127.0.0.1" if "valueFrom" in entry else str(entry.get("value", ""))
        master = env.get("MASTER_ADDR")
        env["MASTER_ADDR"] = "127.0.0.1"
        env["SOLOV2_TERMINATION_LOG"] = str(log)

        def local(arg: str) -> str:
            if arg == master:
                return "127.0.0.1"
            if arg == container.get("terminationMessagePath", "/dev/termination-log"):
                return str(log)
            for path, host in mounts.items():
                if arg == path or arg.startswith(path + "/"):
                    return str(host) + arg[len(path) :]
            return arg

        command = [local(a) for a in [*container["command"], *container.get("args", [])]]
        with open(self.root / "pods" / name / "output.log", "ab") as output:
            process = await asyncio.create_subprocess_exec(
                *command, env=env, cwd=self.root, stdout=output, stderr=output, start_new_session=True
            )
        self.running[name] = _Running(pod["metadata"]["uid"], process, log)
        await self._patch(name, {
            "phase": "Running", "podIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [_container_status(True, {"running": {}})],
        })  # fmt: skip

    async def _report_exit(self, name: str, run: _Running) -> None:
        """Report how the process exited, on its own pod only (as a kubelet reports by pod UID): a
        pod that was deleted, or replaced by a new one of the same name, gets no report."""
        run.reported = True
        current = objects_of(self.emulator, PODS).get(name)
        if current is None or current["metadata"]["uid"] != run.uid:
            return
        code = run.process.returncode
        assert code is not None
        exit_code = 128 - code if code < 0 else code
        message = run.termination_log.read_bytes()[:4096].decode(errors="replace")
        terminated = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "message": message,
        }
        await self._patch(name, {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [_container_status(False, {"terminated": terminated})],
        })  # fmt: skip

    async def _stop(self, name: str) -> None:
        run = self.running.pop(name)
        if run.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                run.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(run.process.wait(), self.grace)
        await _sigkill(name, run)

    def _send_status(self, name: str, status: dict[str, Any]) -> None:
        response = self.core.patch_namespaced_pod_status(
            name, "default", {"status": status},
            _content_type="application/merge-patch+json", _preload_content=False, _request_timeout=10,
        )  # fmt: skip
        response.read()
        response.release_conn()

    async def _patch(self, name: str, status: dict[str, Any], attempts: int = 20) -> None:
        """Report a pod's status; retried, as a lost report would leave the pod running forever to
        the operator. A pod that is gone already needs no report."""
        for attempt in range(attempts):
            try:
                await asyncio.to_thread(self._send_status, name, status)
                return
            except ApiException as exc:
                if exc.status == 404:
                    return
                error: Exception = exc
            except urllib3.exceptions.HTTPError as exc:  # connection refused or reset, timeout
                error = exc
            await asyncio.sleep(0.2 * (attempt + 1))
        raise RuntimeError(f"pod {name}: status not reported after {attempts} attempts: {error}")


async def _sigkill(name: str, run: _Running, timeout: float = 10.0) -> None:
    """SIGKILL pod ``name``'s processes until its first process has exited and none is left. The
    signal is repeated: a process in the middle of ``execve`` (the worker script's ``exec torchrun``)
    shows an empty environment for a moment, and a process may fork while the others are signalled."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (left := pod_processes(run.uid)) or run.process.returncode is None:
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"pod {name}: processes {left or [run.process.pid]} survive SIGKILL")
        signal_all(left, signal.SIGKILL)
        await asyncio.sleep(0.1)


def _container_status(ready: bool, state: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "trainer", "image": "solov2", "imageID": "solov2@sha256:0", "restartCount": 0,
        "ready": ready, "state": state,
    }  # fmt: skip
