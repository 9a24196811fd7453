"""engine/workflow.py against /object_info of a current ComfyUI (0.3.64, tests/fixtures) and the prompt-runner
Wan 2.2 graphs (which need custom nodes that fixture lacks)."""

from __future__ import annotations

import copy
import json

import pytest

from comfy_worker.engine import find_media_inputs, is_ui_format, problems, set_input, ui_to_api, validate
from comfy_worker.errors import WorkflowInvalid
from tests.fixture_files import OBJECT_INFO_0364, VACE_WORKFLOWS

WAN = VACE_WORKFLOWS / "prompt.json"


@pytest.fixture(scope="module")
def info() -> dict:
    return json.loads(OBJECT_INFO_0364.read_text())


def wf_ok() -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {
            "class_type": "ImageScale",
            "inputs": {
                "image": ["1", 0],
                "upscale_method": "bilinear",
                "width": 32,
                "height": 32,
                "crop": "center",
            },
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
    }


def test_valid_workflow_passes(info: dict) -> None:
    validate(wf_ok(), info)


@pytest.mark.parametrize("bad", [None, [], {}, "text", {"1": "not a node"}, {"1": {"inputs": {}}}])
def test_not_a_dict_of_nodes(info: dict, bad: object) -> None:
    with pytest.raises(WorkflowInvalid):
        validate(bad, info)


def test_all_problems_listed_with_node_ids(info: dict) -> None:
    wf = wf_ok()
    wf["4"] = {"class_type": "WanVideoSampler", "inputs": {}}
    wf["2"]["inputs"]["upscale_method"] = "cubic-ish"
    wf["2"]["inputs"]["width"] = 99999
    del wf["1"]["inputs"]["height"]
    wf["3"]["inputs"]["images"] = ["2", 5]
    wf["5"] = {"class_type": "PreviewImage", "inputs": {"images": ["42", 0]}}
    with pytest.raises(WorkflowInvalid) as exc:
        validate(wf, info)
    found = exc.value.details["problems"]
    msgs = " | ".join(p["message"] for p in found)
    assert len(found) == 6, msgs
    assert "node 4: node type WanVideoSampler is not installed (custom node pack missing?)" in msgs
    assert "node 2 (ImageScale) input 'upscale_method': value 'cubic-ish' is not allowed" in msgs
    assert "99999 is above the maximum 16384" in msgs
    assert "node 1 (EmptyImage): required input 'height' is missing" in msgs
    assert "links to output 5 of node 2 (ImageScale), which has 1 output(s)" in msgs
    assert "node 5 (PreviewImage) input 'images' links to node 42, which does not exist" in msgs
    assert {p["node_id"] for p in found} == {"1", "2", "3", "4", "5"}
    assert exc.value.retryable is False


def test_min_and_type_checks(info: dict) -> None:
    wf = wf_ok()
    wf["1"]["inputs"]["width"] = 0
    wf["1"]["inputs"]["batch_size"] = "many"
    wf["1"]["inputs"]["color"] = 1.5
    msgs = [p["message"] for p in problems(wf, info)]
    assert any("0 is below the minimum 1" in m for m in msgs)
    assert any("expected a number, got 'many'" in m for m in msgs)
    assert any("expected an integer, got 1.5" in m for m in msgs)


def test_model_enum_close_matches_and_empty_list_unknown(info: dict) -> None:
    local = copy.deepcopy(info)
    local["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"] = [
        ["sd_xl_base_1.0.safetensors", "v1-5-pruned-emaonly.safetensors"],
        {},
    ]
    wf = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.ckpt"}}}
    with pytest.raises(
        WorkflowInvalid,
        match=r"model sd_xl_base_1.0.ckpt is not installed; close matches: "
        r"sd_xl_base_1.0.safetensors",
    ):
        validate(wf, local)
    validate(wf, info)  # the fixture's model lists are empty: unknown, not invalid


def test_a_sampler_typo_is_a_bad_value_not_a_missing_model(info: dict) -> None:
    wf = {
        "1": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "eulr"}},
    }
    with pytest.raises(WorkflowInvalid) as err:
        validate(wf, info)
    assert "value 'eulr' is not allowed; allowed: euler" in str(err.value)
    assert "model" not in str(err.value) and "models sync" not in str(err.value)


def test_uploaded_file_inputs_skip_enum_check(info: dict) -> None:
    wf = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "uploaded/just-now.png"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    validate(wf, info)


def test_combo_form_enum_checked(info: dict) -> None:
    wf = {
        "1": {
            "class_type": "SaveVideo",
            "inputs": {"video": ["2", 0], "filename_prefix": "v", "format": "gif", "codec": "auto"},
        },
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["3", 0], "fps": 8.0}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 2, "color": 0}},
    }
    msgs = [p["message"] for p in problems(wf, info)]
    assert msgs == ["node 1 (SaveVideo) input 'format': value 'gif' is not allowed; allowed: auto, mp4"]


def test_wan_prompt_runner_graph_needs_custom_nodes(info: dict) -> None:
    if not WAN.exists():
        pytest.skip("prompt-runner fixture missing")
    wf = json.loads(WAN.read_text())
    found = problems(wf, info)
    missing = {p["class_type"] for p in found if "is not installed (custom node pack missing?)" in p["message"]}
    assert any(c.startswith("WanVideo") for c in missing)
    assert all(p["node_id"] in wf for p in found)


def test_find_media_inputs(info: dict) -> None:
    wf = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "https://h.example/a.png"}},
        "2": {"class_type": "LoadVideo", "inputs": {"file": "http://h.example/v.mp4"}},
        "3": {"class_type": "LoadAudio", "inputs": {"audio": "HTTPS://h.example/s.wav"}},
        "4": {"class_type": "VHS_LoadVideo", "inputs": {"video": "https://h.example/w.mp4", "force_rate": 0}},
        "5": {"class_type": "LoadImage", "inputs": {"image": "local.png"}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "https://x/y"}},
    }
    assert find_media_inputs(wf, info) == [
        ("1", "image", "https://h.example/a.png"),
        ("2", "file", "http://h.example/v.mp4"),
        ("3", "audio", "HTTPS://h.example/s.wav"),
        ("4", "video", "https://h.example/w.mp4"),  # unknown to this object_info: known loader table
    ]


def test_set_input() -> None:
    wf = wf_ok()
    set_input(wf, "3", "filename_prefix", "y")
    assert wf["3"]["inputs"]["filename_prefix"] == "y"
    with pytest.raises(WorkflowInvalid, match="node 99 does not exist"):
        set_input(wf, "99", "x", 1)


# --- UI format -------------------------------------------------------------------------------------------


def ui_graph() -> dict:
    return {
        "nodes": [
            {
                "id": 10,
                "type": "KSampler",
                "mode": 0,
                "inputs": [
                    {"name": "model", "type": "MODEL", "link": 1},
                    {"name": "positive", "type": "CONDITIONING", "link": 2},
                    {"name": "negative", "type": "CONDITIONING", "link": 2},
                    {"name": "latent_image", "type": "LATENT", "link": 3},
                ],
                "widgets_values": [123, "randomize", 20, 7.5, "euler", "normal", 1.0],
            },
            {"id": 11, "type": "CheckpointLoaderSimple", "mode": 0, "widgets_values": ["m.safetensors"]},
            {
                "id": 12,
                "type": "CLIPTextEncode",
                "mode": 0,
                "inputs": [{"name": "clip", "type": "CLIP", "link": 4}],
                "widgets_values": ["a cat"],
            },
            {"id": 13, "type": "EmptyLatentImage", "mode": 0, "widgets_values": [512, 512, 1]},
            {"id": 14, "type": "LoadImage", "mode": 0, "widgets_values": ["in.png", "image"]},
            {"id": 15, "type": "Note", "mode": 0, "widgets_values": ["hi"]},
            {"id": 16, "type": "SaveImage", "mode": 2, "widgets_values": ["muted"]},
        ],
        "links": [
            [1, 11, 0, 10, 0, "MODEL"],
            [2, 12, 0, 10, 1, "CONDITIONING"],
            [3, 13, 0, 10, 3, "LATENT"],
            [4, 11, 1, 12, 0, "CLIP"],
        ],
    }


def test_ui_to_api(info: dict) -> None:
    ui = ui_graph()
    assert is_ui_format(ui) and not is_ui_format(wf_ok())
    api = ui_to_api(ui, info)
    assert set(api) == {"10", "11", "12", "13", "14"}
    assert api["10"]["inputs"] == {
        "model": ["11", 0],
        "seed": 123,
        "steps": 20,
        "cfg": 7.5,
        "sampler_name": "euler",
        "scheduler": "normal",
        "positive": ["12", 0],
        "negative": ["12", 0],
        "latent_image": ["13", 0],
        "denoise": 1.0,
    }
    assert api["12"]["inputs"] == {"text": "a cat", "clip": ["11", 1]}
    assert api["14"]["inputs"] == {"image": "in.png"}
    validate(api, info)


def test_ui_to_api_unknown_node_gives_export_advice(info: dict) -> None:
    ui = ui_graph()
    ui["nodes"].append({"id": 20, "type": "WanVideoSampler", "mode": 0, "widgets_values": []})
    ui["nodes"].append({"id": 21, "type": "ImageInvert", "mode": 4, "widgets_values": []})
    with pytest.raises(WorkflowInvalid) as exc:
        ui_to_api(ui, info)
    assert "node 20 (WanVideoSampler): node type WanVideoSampler is not on this ComfyUI" in str(exc.value)
    assert "install the custom node pack that provides it" in str(exc.value)
    assert "node 21" not in str(exc.value)  # bypassed nodes pass through (tests/unit/test_ui_convert.py)
    assert "Save (API Format)" in str(exc.value)
