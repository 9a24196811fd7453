"""Parity with ComfyUI's official Wan 2.2 templates (PyPI comfyui-workflow-templates-json, pinned in pyproject).

Each template is converted to API format with our converter (engine.workflow.ui_to_api), the switches and
primitives it computes with are folded to the values they produce (tests/template_parity.py), and our builder is
run with the template's parameters (its seed, input file names, output prefix; prompts and every other setting
are our defaults, which are the template's). Node types, links and sampler settings must then be equal, and so
must the whole graph up to node ids and titles.

Differences, each justified, are applied to both graphs before comparing (:data:`JUSTIFIED`):
* flf2v: the template's LOW sampler runs to end_at_step 10000, ours to ``steps``; KSamplerAdvanced clamps to the
  schedule's length, so both sample the same steps. Ours states the real end.
* s2v: the template gives every 77-frame window its own unrelated seed (20, 1, 250); ours derives window n's seed
  as ``seed + n - 1`` so that one ``seed`` in the task reproduces the whole video. Window seeds are compared apart.
  And the template keeps every decoded frame (80 per window less 2: up to a window of silent video after the
  audio ends); ours cuts the video to ``num_frames`` (the audio's length). The cut's length is compared apart.
* i2v / t2v: the templates need ComfySwitchNode and ComfyMathExpression (newer than 0.3.64) to switch between
  the normal and the 4-step settings and to compute frames = floor(duration x fps) + 1; ours builds the chosen
  branch directly (``use_lora``, ``num_frames``), so the folded template is what we compare with.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from comfy_worker.builders import build
from comfy_worker.builders.params import FLF2V, I2V, S2V, T2V, TI2V
from comfy_worker.engine import problems, ui_to_api
from comfy_worker.errors import WorkflowInvalid
from tests.template_parity import NEWER_NODES, edges, fold_constants, samplers, signatures, template
from tests.wan_cases import object_info_0364, with_models

pytest.importorskip("comfyui_workflow_templates_json")


def _end_at_steps(graph: dict[str, Any]) -> None:
    for node in graph.values():
        inputs = node["inputs"]
        if node["class_type"] == "KSamplerAdvanced" and inputs["end_at_step"] >= inputs["steps"]:
            inputs["end_at_step"] = inputs["steps"]


def _window_seeds(graph: dict[str, Any]) -> tuple[list[int], int]:
    seeds, length = [], 0
    for node in graph.values():
        if node["class_type"] == "KSampler":
            seeds.append(node["inputs"]["seed"])
            node["inputs"]["seed"] = 0  # compared apart
        if node["class_type"] == "ImageFromBatch":
            length = node["inputs"]["length"]
            node["inputs"]["length"] = 4096  # compared apart (the template's value: valid in both)
    return sorted(seeds), length


# template → (task type, the template's parameters, media names, justified normalisation)
PARITY: dict[str, tuple[str, dict[str, Any], dict[str, str], Callable[[dict[str, Any]], Any] | None]] = {
    "video_wan2_2_14B_i2v": (
        I2V,
        {"seed": 264244520398999, "filename_prefix": "video/Wan2.2_i2v"},
        {"image": "video_wan2_2_14B_i2v_input_image.jpg"},
        None,
    ),
    "video_wan2_2_14B_t2v": (T2V, {"seed": 923510416338945, "filename_prefix": "video/ComfyUI"}, {}, None),
    "video_wan2_2_5B_ti2v": (TI2V, {"seed": 898471028164125, "filename_prefix": "video/ComfyUI"}, {}, None),
    "video_wan2_2_14B_s2v": (
        S2V,
        {"seed": 20, "num_frames": 231, "filename_prefix": "video/ComfyUI"},
        {"image": "video_wan2_2_14B_s2v_reference_image.jpg", "audio": "video_wan2_2_14B_s2v_input_audio.MP3"},
        _window_seeds,
    ),
    "video_wan2_2_14B_flf2v": (
        FLF2V,
        {"seed": 984937593540091, "filename_prefix": "video/ComfyUI"},
        {"image": "video_wan2_2_14B_flf2v_start_image.png", "last_image": "video_wan2_2_14B_flf2v_end_image.png"},
        _end_at_steps,
    ),
}


def _pair(name: str) -> tuple[dict[str, Any], dict[str, Any], Any, Any]:
    task_type, params, media, justify = PARITY[name]
    info = {**object_info_0364(), **NEWER_NODES}
    theirs = fold_constants(ui_to_api(template(name), info))
    ours = build(task_type, params, media)
    extra = (justify(theirs), justify(ours)) if justify else (None, None)
    return theirs, ours, *extra


@pytest.mark.parametrize("name", sorted(PARITY))
def test_same_graph_as_the_official_template(name: str) -> None:
    theirs, ours, their_extra, our_extra = _pair(name)
    assert Counter(n["class_type"] for n in ours.values()) == Counter(n["class_type"] for n in theirs.values())
    assert edges(ours) == edges(theirs)
    assert samplers(ours) == samplers(theirs)
    only_ours, only_theirs = signatures(ours) - signatures(theirs), signatures(theirs) - signatures(ours)
    shown = [s[:300] for s in (*only_ours, *only_theirs)]
    assert not only_ours and not only_theirs, f"{len(only_ours)} only ours, {len(only_theirs)} only theirs: {shown}"
    info = with_models(object_info_0364(), ours)
    assert problems(theirs, info, empty_model_lists="missing") == []  # the folded template runs on 0.3.64 too
    if name.endswith("s2v"):
        # window seeds; and the video's length: the template keeps all 238 decoded frames (the 231 asked for and
        # 7 more), ours cuts the video to num_frames so that it lasts as long as its audio
        assert their_extra == ([1, 20, 250], 4096) and our_extra == ([20, 21, 22], 231)


@pytest.mark.parametrize("name", ["video_wan2_2_14B_i2v", "video_wan2_2_14B_t2v"])
def test_templates_with_newer_core_nodes_name_them_for_0364(name: str) -> None:
    with pytest.raises(WorkflowInvalid) as exc:
        ui_to_api(template(name), object_info_0364(), server="ComfyUI 0.3.64")
    msg = str(exc.value)
    assert "node type ComfySwitchNode is not on ComfyUI 0.3.64" in msg and "update ComfyUI" in msg
    assert "node type ComfyMathExpression is not on ComfyUI 0.3.64" in msg
    # each problem names the node by its flattened id (subgraph instance:inner node) and title
    assert all(p.startswith("node ") and ":" in p.split(" ")[1] for p in exc.value.details["problems"])


@pytest.mark.parametrize("name", ["video_wan2_2_5B_ti2v", "video_wan2_2_14B_s2v", "video_wan2_2_14B_flf2v"])
def test_other_templates_convert_for_0364_as_exported(name: str) -> None:
    api = ui_to_api(template(name), object_info_0364())
    assert problems(api, with_models(object_info_0364(), api), empty_model_lists="missing") == []
