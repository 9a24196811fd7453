"""analyze: categories on the prompt-runner workflow (tests/fixtures) and on the official Wan 2.2 templates (PyPI
comfyui-workflow-templates-json, UI format converted by engine.ui_to_api), ranges from the 0.3.64 /object_info,
and a template that is a valid batch config as written and with everything uncommented."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfy_worker.engine import ui_to_api
from comfy_worker.errors import WorkflowInvalid
from comfy_worker.explore.analyze import Finding, analyze, template
from comfy_worker.explore.batch_config import parse_config
from tests.fixture_files import OBJECT_INFO_0364, VACE_WORKFLOWS
from tests.template_parity import NEWER_NODES, fold_constants

OBJECT_INFO = json.loads(OBJECT_INFO_0364.read_text())
PROMPT_RUNNER = VACE_WORKFLOWS / "prompt.json"


def template_json(name: str) -> dict[str, Any]:
    import comfyui_workflow_templates_json as pkg

    return json.loads(resources.files(pkg).joinpath("templates", name).read_text())


def by(findings: list[Finding], node: str, name: str) -> Finding:
    return next(f for f in findings if f.node_id == node and f.input == name)


def cats(findings: list[Finding], category: str) -> set[tuple[str, str]]:
    return {(f.class_type, f.input) for f in findings if f.category == category}


def test_prompt_runner_workflow_is_categorised() -> None:
    wf = json.loads(PROMPT_RUNNER.read_text())
    f = analyze(wf, OBJECT_INFO)  # custom nodes: categories come from the inputs themselves
    assert cats(f, "seed") == {("Seed Everywhere", "seed")}
    assert ("WanVideoSampler", "cfg") in cats(f, "cfg")
    assert ("WanVideoSampler", "shift") in cats(f, "shift")
    assert ("WanVideoSampler", "scheduler") in cats(f, "scheduler")
    assert ("WanVideoSampler", "denoise_strength") in cats(f, "denoise")
    assert {(n.node_id, n.input) for n in f if n.category == "lora_strength"} == {
        ("309:298", "strength"), ("309:299", "strength"), ("309:300", "strength")}
    assert ("WanVideoVACEEncode", "strength") in cats(f, "strength")  # a strength, but not a LoRA's
    assert {("WanVideoTextEncode", "positive_prompt"), ("WanVideoTextEncode", "negative_prompt")} <= cats(f, "text")
    files = cats(f, "file")
    assert {("WanVideoModelLoader", "model"), ("WanVideoVAELoader", "model_name"), ("VHS_LoadVideo", "video"),
            ("WanVideoLoraSelect", "lora")} <= files
    assert ("VHS_VideoCombine", "frame_rate") in cats(f, "fps")
    # links are not literal inputs
    assert not any(f_.node_id == "54" and f_.input == "model" for f_ in f)
    # obvious candidates on, the rest off; text never varied by default
    assert {n.name for n in f if n.enabled} == {"seed", "cfg", "lora_strength_309_298", "lora_strength_309_299",
                                                "lora_strength_309_300"}
    assert by(f, "53", "positive_prompt").notes == ["text prompt: not varied by default"]


def test_wan22_5b_template_converts_and_is_categorised_with_server_ranges() -> None:
    wf = ui_to_api(template_json("video_wan2_2_5B_fun_inpaint.json"), OBJECT_INFO)
    f = analyze(wf, OBJECT_INFO)
    assert cats(f, "seed") == {("KSampler", "seed")}
    assert cats(f, "steps") == {("KSampler", "steps")}
    assert cats(f, "cfg") == {("KSampler", "cfg")}
    assert cats(f, "sampler") == {("KSampler", "sampler_name")}
    assert cats(f, "scheduler") == {("KSampler", "scheduler")}
    assert cats(f, "shift") == {("ModelSamplingSD3", "shift")}
    assert cats(f, "denoise") == {("KSampler", "denoise")}
    assert cats(f, "resolution") >= {("WanFunInpaintToVideo", n) for n in ("width", "height", "length")}
    assert all("expensive" in n.notes[0] for n in f if n.category == "resolution")
    assert cats(f, "fps") == {("CreateVideo", "fps")}
    assert cats(f, "text") == {("CLIPTextEncode", "text")}
    assert cats(f, "file") >= {("UNETLoader", "unet_name"), ("VAELoader", "vae_name"), ("LoadImage", "image")}
    cfg = next(n for n in f if n.input == "cfg")
    assert cfg.value == 6 and cfg.spec == {"min": 0.0, "max": 100.0, "step": 0.1}
    assert cfg.suggestion == {"type": "continuous", "min": 3.0, "max": 9.0, "step": 0.1}
    steps = next(n for n in f if n.input == "steps")
    assert steps.suggestion == {"type": "linear", "min": 10, "max": 30, "step": 5}
    sampler = next(n for n in f if n.input == "sampler_name")
    assert sampler.suggestion["values"][0] == "uni_pc"
    assert set(sampler.suggestion["values"]) <= set(OBJECT_INFO["KSampler"]["input"]["required"]["sampler_name"][0])
    shift = next(n for n in f if n.input == "shift")
    assert shift.suggestion["min"] >= 0 and shift.suggestion["max"] <= 100


@pytest.mark.parametrize("name", ["video_wan2_2_14B_t2v.json", "video_wan2_2_14B_i2v.json"])
def test_wan22_14b_subgraph_templates_are_categorised(name: str) -> None:
    # These templates use two core nodes newer than 0.3.64 (ComfySwitchNode, ComfyMathExpression): against that
    # server, conversion refuses them naming the node and the fix ...
    with pytest.raises(WorkflowInvalid, match=r"ComfyMathExpression|ComfySwitchNode"):
        ui_to_api(template_json(name), OBJECT_INFO)
    # ... and against a server that has them (their slots as a current /object_info describes them), the
    # subgraphs flatten; with the switches and expressions evaluated as the server would, analyze categorises it
    wf = fold_constants(ui_to_api(template_json(name), {**OBJECT_INFO, **NEWER_NODES}))
    f = analyze(wf, OBJECT_INFO)
    assert ("KSamplerAdvanced", "noise_seed") in cats(f, "seed")
    # (the templates' switch picks the 20-step branch: its 4-step LoRA loaders feed no output and drop out)
    assert sum(1 for n in f if (n.class_type, n.input) == ("ModelSamplingSD3", "shift")) == 2
    assert {"width", "height", "length"} <= {n.input for n in f if n.category == "resolution"}
    assert ("CLIPTextEncode", "text") in cats(f, "text")
    assert sum(1 for n in f if (n.class_type, n.input) == ("UNETLoader", "unet_name")) == 2  # HIGH and LOW


def _uncomment_all(text: str) -> str:
    """Turn every commented parameter block of the template on (comment lines that are YAML, not prose)."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^  # ( *)([A-Za-z_][\w]*:.*)$", line)
        if m and not line.startswith("  # node ") and not m.group(2).startswith(("text prompt", "file reference",
                                                                                     "expensive")):
            out.append("  " + m.group(1) + m.group(2))
        else:
            out.append(line)
    return "\n".join(out)


def test_template_is_a_valid_batch_config_as_written_and_fully_uncommented(tmp_path: Path) -> None:
    wf = ui_to_api(template_json("video_wan2_2_5B_fun_inpaint.json"), OBJECT_INFO)
    (tmp_path / "wf.json").write_text(json.dumps(wf))
    text = template(analyze(wf, OBJECT_INFO), "wf.json")
    raw = yaml.safe_load(text)
    assert set(raw["parameters"]) == {"seed", "cfg"}
    cfg = parse_config(raw, tmp_path / "c.yaml", object_info=OBJECT_INFO)
    runs = cfg.plan().runs
    assert len(runs) == 16 and all(3.0 <= r.values["cfg"] <= 9.0 for r in runs)
    assert runs[0].name.startswith("0000_cfg")
    every = yaml.safe_load(_uncomment_all(text))
    assert {"steps", "sampler_name", "scheduler", "shift", "denoise", "width", "text_6", "unet_name"} <= set(
        every["parameters"])
    # (without /object_info: the fixture's server has no model files, so every model name would be refused)
    assert len(parse_config(every, tmp_path / "c.yaml").plan().runs) == 16
