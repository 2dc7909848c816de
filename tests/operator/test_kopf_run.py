"""The operator as a real ``kopf run`` process, as a Deployment would run it, against the emulator."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes.client import ApiClient, Configuration, CustomObjectsApi

from .emulator import PODS, TRAININGS, objects_of, serve

KOPF = Path(sys.executable).with_name("kopf")


@pytest.mark.asyncio
async def test_kopf_run_process_creates_the_gang_and_writes_status(tmp_path, unused_tcp_port):
    async with serve() as (emulator, url):
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump({
                "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
                "clusters": [{"name": "emulator", "cluster": {"server": url}}],
                "users": [{"name": "test", "user": {"token": "t"}}],
                "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "test"}}],
            })
        )  # fmt: skip
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "SOLOV2_TEST_API_URL": url}
        login = Path(__file__).with_name("kopf_run_login.py")
        process = await asyncio.create_subprocess_exec(
            str(KOPF), "run", "--standalone", "--all-namespaces",
            "--liveness", f"http://127.0.0.1:{unused_tcp_port}/healthz",
            str(login), "-m", "solov2_operator.kopf_app",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            body = {
                "apiVersion": "solov2.io/v1alpha1", "kind": "SOLOv2Training", "metadata": {"name": "proc"},
                "spec": {"image": "solov2:cpu", "device": "cpu", "nodes": 2, "devicesPerNode": 1},
            }  # fmt: skip
            custom = CustomObjectsApi(ApiClient(Configuration(host=url)))
            await asyncio.to_thread(
                custom.create_namespaced_custom_object,
                "solov2.io",
                "v1alpha1",
                "default",
                "solov2trainings",
                body,
            )
            for _ in range(300):
                training = objects_of(emulator, TRAININGS).get("proc", {})
                pods = [n for n in objects_of(emulator, PODS) if n.startswith("proc-worker-")]
                if len(pods) == 2 and (training.get("status") or {}).get("phase") == "Pending":
                    break
                assert process.returncode is None, "kopf run exited"
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("kopf run did not create the gang")
            assert sorted(pods) == ["proc-worker-0", "proc-worker-1"]
            reader, writer = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
            writer.write(b"GET /healthz HTTP/1.0\r\n\r\n")
            status_line = (await reader.readline()).decode()
            writer.close()
            assert " 200 " in status_line
        finally:
            process.send_signal(signal.SIGINT)
            try:
                output, _ = await asyncio.wait_for(process.communicate(), 20)
            except asyncio.TimeoutError:
                process.kill()
                output, _ = await process.communicate()
        assert process.returncode == 0, output.decode()[-3000:]
