"""prompt-runner on a RunPod pod: --force-shutdown stops the pod even after a failed run; by default a failed
run leaves it up (someone will want to look), and --no-shutdown never stops it. RunPod's API is the test
stand-in (tests/standins/runpod.py); the run fails early (no COMFY_OUTPUT_DIR), so no ComfyUI is needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpu_orchestrator.provider import PodRequest
from gpu_orchestrator.runpod import RunPodClient
from tests.integration.prompt_runner.test_cli_runs import cli, prompt_file
from tests.standins.runpod import RunPodStandIn


@pytest.mark.parametrize(("flag", "stopped"), [("--force-shutdown", True), (None, False), ("--no-shutdown", False)])
async def test_failed_run_and_the_pod(flag: str | None, stopped: bool, tmp_path: Path) -> None:
    standin = RunPodStandIn("rp-key")
    url = await standin.start()
    client = RunPodClient("rp-key", url)
    try:
        pod = await client.create_pod(PodRequest("renderer", "img", ("NVIDIA A40",)))
        pf = prompt_file(tmp_path, "pod_run", 18)
        env = {
            "RUNPOD_POD_ID": pod.id,
            "RUNPOD_API_KEY": "rp-key",
            "RUNPOD_API_URL": url,
            "COMFY_OUTPUT_DIR": "",
            "COMFY_PATH": "",
            "COMFY_URL": "http://127.0.0.1:9",
        }
        code, out = await cli(
            "--prompt-file",
            str(pf),
            "--output-dir",
            str(tmp_path / "out"),
            "--no-upload",
            *([flag] if flag else []),
            env=env,
        )
        assert code == 1 and "COMFY_OUTPUT_DIR" in out
        assert (await client.get_pod(pod.id)).status == ("EXITED" if stopped else "RUNNING")
        assert "rp-key" not in out
    finally:
        await client.close()
        await standin.stop()
