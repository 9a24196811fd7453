"""`--terminate-pod-on-exit`: a worker that drained (here: went idle) stops its own RunPod pod, so RunPod does
not restart the container and keep billing. RunPod's API is the test stand-in (tests/standins/runpod.py)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from gpu_orchestrator.provider import PodRequest
from gpu_orchestrator.runpod import RunPodClient
from tests.integration.engine.conftest import ComfyServer
from tests.standins.runpod import RunPodStandIn

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.comfyui


async def test_idle_worker_stops_its_own_pod(comfyui_server: ComfyServer, tmp_path: Path) -> None:
    standin = RunPodStandIn("rp-test-key")
    url = await standin.start()
    client = RunPodClient("rp-test-key", url)
    try:
        pod = await client.create_pod(PodRequest("comfy-worker-pod", "img", ("NVIDIA A40",)))
        assert (await client.get_pod(pod.id)).status == "RUNNING"
        env = {
            **os.environ,
            "COMFY_URL": comfyui_server.base_url,
            "RUNPOD_POD_ID": pod.id,
            "RUNPOD_API_KEY": "rp-test-key",
            "RUNPOD_API_URL": url,
            "POLL_INTERVAL": "0.2",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'q.db'}",
            "LOCAL_STORAGE_DIR": str(tmp_path / "out"),
            "PYTHONPATH": str(REPO),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "comfy_worker",
            "--worker-id",
            "comfy-worker-pod",
            "--exit-when-idle",
            "--terminate-pod-on-exit",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()[-3000:]
        assert b"pod_stopped" in err and b"rp-test-key" not in err
        assert (await client.get_pod(pod.id)).status == "EXITED"
        assert ("POST", f"/v2/pods/{pod.id}/action", 200) in standin.requests
    finally:
        await client.close()
        await standin.stop()
