"""Operator scale: time from creating SOLOv2Trainings until all their pods exist, and operator memory.

    python bench/operator_scale.py                   # 1, 10 and 100 trainings created at once
    python bench/operator_scale.py --counts 100 300

Runs kmock's Kubernetes emulator in this process and the operator as a real ``kopf run`` process
against it (cluster-wide, default settings). For each count, that many two-worker
CPU trainings are created at once; the emulator timestamps each request as it arrives, so a training's
latency is (arrival of its last worker pod's create) - (arrival of the training's create). Prints one
JSON object: p50/p99/max latency per count, and the operator process's resident memory (VmRSS, and the
peak VmHWM) after the largest count, and the CPU seconds the operator and this process (emulator and
client) used in each round: kmock's emulator is far slower than an API server, so where it dominates the
latencies measure the emulator rather than the operator. Target: p99 under 1 s at 100 trainings, memory under 150 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubernetes.client import ApiClient, Configuration, CustomObjectsApi  # noqa: E402
from tests.operator.emulator import Emulator, serve  # noqa: E402

KOPF = str(Path(sys.executable).with_name("kopf"))
LOGIN = ROOT / "tests" / "operator" / "kopf_run_login.py"


class TimedEmulator(Emulator):
    """Records when each training's and each pod's create request arrives."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.created: dict[tuple[str, str], float] = {}

    async def _handle(self, request):  # type: ignore[no-untyped-def]
        if request.resource is not None and str(request.action.value).lower() == "create":
            name = ((request.data or {}).get("metadata") or {}).get("name", "")
            self.created.setdefault((request.resource.plural, name), time.monotonic())
        return await super()._handle(request)


def _cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one by default)."""
    fields = Path(f"/proc/{pid or 'self'}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _memory(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024  # kB -> MiB
    return {"rss_mib": round(fields["VmRSS"], 1), "peak_rss_mib": round(fields["VmHWM"], 1)}


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _round(
    emulator: TimedEmulator, custom: CustomObjectsApi, prefix: str, count: int
) -> dict[str, float]:
    names = [f"{prefix}-{i}" for i in range(count)]
    body = {"image": "solov2:cpu", "device": "cpu", "nodes": 2, "devicesPerNode": 1}

    def create(name: str) -> None:
        custom.create_namespaced_custom_object(
            "solov2.io", "v1alpha1", "default", "solov2trainings",
            {"apiVersion": "solov2.io/v1alpha1", "kind": "SOLOv2Training", "metadata": {"name": name}, "spec": body},
            _preload_content=False,
        )  # fmt: skip

    await asyncio.gather(*(asyncio.to_thread(create, n) for n in names))
    pods = [(n, f"{n}-worker-{i}") for n in names for i in range(2)]
    deadline = time.monotonic() + 120
    while not all(("pods", p) in emulator.created for _, p in pods):
        if time.monotonic() > deadline:
            raise SystemExit(f"{prefix}: not all pods created within 120 s")
        await asyncio.sleep(0.05)
    latencies = [
        max(emulator.created[("pods", f"{n}-worker-{i}")] for i in range(2))
        - emulator.created[("solov2trainings", n)]
        for n in names
    ]
    return {
        "trainings": count,
        "p50_s": round(statistics.median(latencies), 3),
        "p99_s": round(_quantile(latencies, 0.99), 3),
        "max_s": round(max(latencies), 3),
    }


async def main(counts: list[int]) -> dict:
    async with serve(TimedEmulator) as (emulator, url):
        with tempfile.TemporaryDirectory() as tmp:
            kubeconfig = Path(tmp) / "kubeconfig"
            kubeconfig.write_text(json.dumps({
                "apiVersion": "v1", "kind": "Config", "current-context": "e",
                "clusters": [{"name": "e", "cluster": {"server": url}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "e", "context": {"cluster": "e", "user": "u"}}],
            }))  # fmt: skip
            env = {**os.environ, "KUBECONFIG": str(kubeconfig), "SOLOV2_TEST_API_URL": url}
            process = await asyncio.create_subprocess_exec(
                KOPF, "run", "--standalone", "--all-namespaces", "--quiet", str(LOGIN),
                "-m", "solov2_operator.kopf_app", env=env,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            try:
                await asyncio.sleep(3)  # kopf starts its watches
                custom = CustomObjectsApi(ApiClient(Configuration(host=url)))
                rounds = []
                for count in counts:
                    cpu = _cpu_seconds(process.pid), _cpu_seconds()
                    rounds.append(await _round(emulator, custom, f"scale{count}", count))
                    rounds[-1]["operator_cpu_s"] = round(_cpu_seconds(process.pid) - cpu[0], 2)
                    rounds[-1]["emulator_and_client_cpu_s"] = round(_cpu_seconds() - cpu[1], 2)
                await asyncio.sleep(1)
                memory = _memory(process.pid)
            finally:
                process.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(process.wait(), 20)
                except asyncio.TimeoutError:
                    process.kill()
    return {
        "benchmark": "operator_scale",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "rounds": rounds,
        "operator_memory_after_all": memory,
        "target": {"p99_s_at_100": 1.0, "rss_mib": 150},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 10, 100], help="trainings per round")
    print(json.dumps(asyncio.run(main(parser.parse_args().counts)), indent=1))
