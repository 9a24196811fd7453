"""The wan22_i2v_chain profile's HIGH and LOW workflows are accepted by a real ComfyUI 0.3.64 /prompt when the
files they read by absolute path (the previous chunk's reference frame, the HIGH pass's latent) are in its output
directory, as the chain executor puts them."""

from __future__ import annotations

import pytest

from comfy_worker.engine import ComfyClient
from comfy_worker.errors import WorkflowInvalid
from comfy_worker.handlers.prompt_runner.build import build_job_workflow
from comfy_worker.handlers.prompt_runner.dryrun import plan_for
from comfy_worker.handlers.prompt_runner.profile import load_profile
from comfy_worker.handlers.prompt_runner.prompt_file import parse_file
from tests.fixture_files import PROMPT_FILES
from tests.integration.wan.conftest import Comfy0364, ffmpeg_media

pytestmark = pytest.mark.comfyui


async def test_chain_steps_accepted_by_comfyui_0364(comfyui_0364: Comfy0364, comfy64: ComfyClient) -> None:
    profile = load_profile("wan22_i2v_chain")
    spec = parse_file(PROMPT_FILES / "city_rain.txt", frames_per_chunk=81)
    plan = plan_for(spec, profile)
    root = comfyui_0364.workdir / "output" / "cw_chains" / "t-chain"
    steps = [j for j in plan.render_jobs if j.chunk_index < 2]  # HIGH 1, LOW 1, HIGH 2 (with a reference), LOW 2
    for job in steps:
        for needed in (job.reference_image_path, job.latent_input_path):
            if needed:
                path = root / needed
                if needed.endswith(".png"):
                    ffmpeg_media(path, "image")
                else:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(b"placeholder latent")  # LoadLatent validation only checks that it exists
        workflow, _ = build_job_workflow(profile, job, comfy_output_dir=str(root), seed=1)
        comfyui_0364.place_models(workflow)
        prompt_id = await comfy64.queue_prompt(workflow)
        await comfy64.interrupt(prompt_id)
    # the control: a LOW step whose latent is not there is refused by the server
    low = steps[-1]
    (root / low.latent_input_path).unlink()
    workflow, _ = build_job_workflow(profile, low, comfy_output_dir=str(root), seed=1)
    loader = next(nid for nid, n in workflow.items() if n["class_type"] == "LoadLatent")
    with pytest.raises(WorkflowInvalid) as exc:
        await comfy64.queue_prompt(workflow)
    assert list(exc.value.details["node_errors"]) == [loader]
