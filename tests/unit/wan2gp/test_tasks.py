"""worker_wgp.tasks: the params contract of every Wan2GP task type (pure)."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comfy_worker.errors import InputRejected
from worker_wgp.tasks import TASK_TYPES, lora_filename, model_for, parse_params

IMG = "https://example.com/cat.png"
VID = "https://example.com/guide.mp4"
MINIMAL: dict[str, dict[str, Any]] = {
    "t2v": {}, "t2v_22": {}, "hunyuan": {}, "ltxv": {}, "flux": {}, "qwen_image": {}, "z_image_turbo": {},
    "i2v": {"image_start": IMG}, "i2v_22": {"image_start": IMG},
    "vace": {"video_guide": VID}, "vace_22": {"video_guide": VID}, "vace_21": {"video_guide": VID},
    "qwen_image_edit": {"image_refs": [IMG]},
}
EXPECTED_MODELS = {
    "t2v": "t2v", "t2v_22": "t2v_2_2", "i2v": "i2v", "i2v_22": "i2v_2_2", "vace": "vace_14B_cocktail_2_2",
    "vace_22": "vace_14B_cocktail_2_2", "vace_21": "vace_14B", "hunyuan": "hunyuan", "ltxv": "ltxv_13B",
    "flux": "flux", "qwen_image": "qwen_image_20B", "qwen_image_edit": "qwen_image_edit_20B",
    "z_image_turbo": "z_image",
}


def rejected(task_type: str, params: dict[str, Any]) -> InputRejected:
    with pytest.raises(InputRejected) as info:
        parse_params(task_type, params)
    return info.value


@pytest.mark.parametrize("task_type", sorted(TASK_TYPES))
def test_every_type_maps_to_its_model_and_needs_a_prompt(task_type: str) -> None:
    assert set(MINIMAL) == set(TASK_TYPES) == set(EXPECTED_MODELS)
    job = parse_params(task_type, {"prompt": "a fox", **MINIMAL[task_type]})
    assert job.model == EXPECTED_MODELS[task_type] == model_for(task_type)
    vace = {"video_prompt_type": "V"} if task_type.startswith("vace") else {}  # see the VACE test below
    assert job.settings == {"prompt": "a fox", **vace}
    assert rejected(task_type, MINIMAL[task_type]).details["field"] == "prompt"
    for key in MINIMAL[task_type]:  # the required media of the type
        error = rejected(task_type, {"prompt": "a fox"})
        assert error.details["field"] == key and "required" in str(error)


def test_unknown_keys_are_refused_naming_the_key_and_the_accepted_ones() -> None:
    error = rejected("i2v", {"prompt": "a", "image_start": IMG, "video_guide": VID})
    assert "params.video_guide is not a parameter of i2v tasks" in str(error)
    assert error.details["field"] == "video_guide" and "image_start" in error.details["accepted"]
    assert "accepted: flow_shift, guidance2_scale" in str(error)
    assert rejected("flux", {"prompt": "a", "video_length": 81}).details["field"] == "video_length"
    with pytest.raises(InputRejected, match="not a Wan2GP task type"):
        parse_params("comfy", {"prompt": "a"})


@pytest.mark.parametrize(
    ("key", "value", "text"),
    [
        ("num_inference_steps", 0, "between 1 and 200"),
        ("num_inference_steps", 2.5, "whole number"),
        ("num_inference_steps", True, "must be a number"),
        ("num_inference_steps", "30", "must be a number"),
        ("guidance_scale", float("nan"), "must be a number"),
        ("guidance_scale", 51, "between 0 and 50"),
        ("seed", -2, "between -1 and"),
        ("video_length", 5000, "between 1 and 2049"),
        ("resolution", "832*480", "WIDTHxHEIGHT"),
        ("resolution", "8x480", "16 to 4096"),
        ("resolution", [832, 480], "WIDTHxHEIGHT"),
        ("prompt", 7, "string"),
        ("prompt", "x" * 20_001, "at most 20000"),
        ("sample_solver", "dpm3", "one of unipc"),
        ("model", "../etc/passwd", "letters, digits"),
        ("timeout_s", 0, "between 1 and"),
    ],
)
def test_values_out_of_range_are_refused_naming_the_key(key: str, value: Any, text: str) -> None:
    error = rejected("t2v", {"prompt": "a", key: value})
    assert error.details["field"] == key and f"params.{key}" in str(error) and text in str(error)


@given(steps=st.integers(1, 200), guidance=st.floats(0, 50), length=st.integers(1, 2049),
       w=st.integers(16, 4096), h=st.integers(16, 4096), seed=st.integers(-1, 2**32 - 1))
def test_values_in_range_pass_through_unchanged(steps: int, guidance: float, length: int, w: int, h: int,
                                                seed: int) -> None:
    params = {"prompt": "p", "num_inference_steps": steps, "guidance_scale": guidance, "video_length": length,
              "resolution": f"{w}x{h}", "seed": seed}
    job = parse_params("t2v_22", params)
    assert job.settings == params
    assert isinstance(job.settings["num_inference_steps"], int)


def test_media_sources_and_lists() -> None:
    job = parse_params("vace", {"prompt": "a", "video_guide": {"storage_path": "inputs/g.mp4"},
                                "image_refs": [IMG, {"base64": "aGk=", "filename": "r.png"}]})
    assert [(m.key, m.index, dict(m.source)) for m in job.media] == [
        ("video_guide", None, {"storage_path": "inputs/g.mp4"}),
        ("image_refs", 0, {"url": IMG}),
        ("image_refs", 1, {"base64": "aGk=", "filename": "r.png"}),
    ]
    for bad, field in [({"url": IMG, "storage_path": "x"}, "video_guide"), ({"path": "/etc/x"}, "video_guide"),
                       ("file:///etc/passwd", "video_guide"), (3, "video_guide")]:
        assert rejected("vace", {"prompt": "a", "video_guide": bad}).details["field"] == field
    assert rejected("vace", {"prompt": "a", "video_guide": VID, "image_refs": []}).details["field"] == "image_refs"
    assert rejected("vace", {"prompt": "a", "video_guide": VID, "image_refs": [IMG, 4]}).details["field"] == \
        "image_refs[1]"


def test_loras() -> None:
    job = parse_params("i2v_22", {"prompt": "a", "image_start": IMG, "loras": [
        {"url": "https://hf.co/x/lightx2v.safetensors", "multiplier": 0.8},
        {"name": "mine.safetensors", "multiplier": "1.0;0.5"},
        {"url": "https://civitai.com/api/download/models/123"},
    ]})
    assert [(lo.url, lo.name, lo.multiplier) for lo in job.loras] == [
        ("https://hf.co/x/lightx2v.safetensors", None, "0.8"),
        (None, "mine.safetensors", "1.0;0.5"),
        ("https://civitai.com/api/download/models/123", None, "1"),
    ]
    for bad, field in [
        ([{"url": "https://a/b", "name": "c"}], "loras[0]"),
        ([{"url": "ftp://a/b"}], "loras[0].url"),
        ([{"name": "../../x.safetensors"}], "loras[0].name"),
        ([{"url": "https://a/b", "multiplier": "lots"}], "loras[0].multiplier"),
        ([{"url": "https://a/b", "weight": 1}], "loras[0]"),
        ({"url": "https://a/b"}, "loras"),
    ]:
        assert rejected("t2v", {"prompt": "a", "loras": bad}).details["field"] == field


def test_lora_file_names_are_safe_and_unique_per_url() -> None:
    a = lora_filename("https://hf.co/x/resolve/main/style.safetensors?download=true")
    b = lora_filename("https://other.example/style.safetensors")
    assert a != b and a.startswith("style-") and a.endswith(".safetensors") and "/" not in a
    assert lora_filename("https://civitai.com/api/download/models/123").endswith(".safetensors")
    assert lora_filename("https://a/b") == lora_filename("https://a/b")


def test_model_override() -> None:
    job = parse_params("i2v_22", {"prompt": "a", "image_start": IMG, "model": "i2v_2_2_Enhanced_Lightning_v2"})
    assert job.model == "i2v_2_2_Enhanced_Lightning_v2" and "model" not in job.settings


def test_every_settings_key_is_a_wan2gp_generate_media_parameter() -> None:
    """The stand-in's generate_media keeps upstream's parameter names (checked against wgp.py by hand); every key
    the contract can put in settings must be one of them, or Wan2GP's API would drop it silently."""
    fake = importlib.import_module("tests.standins.wan2gp.wgp")
    accepted = set(inspect.signature(fake.generate_media).parameters)
    produced = {k for t in TASK_TYPES.values() for k in t.params} - {"loras", "model", "timeout_s"}
    assert produced | {"activated_loras", "loras_multipliers"} <= accepted
    assert {t.model for t in TASK_TYPES.values()} <= fake.VIDEO_MODELS | fake.IMAGE_MODELS


def test_vace_tasks_enable_the_control_video_and_mask_wan2gp_would_otherwise_drop() -> None:
    """Wan2GP reads video_guide only with "V" in video_prompt_type and video_mask only with "A" (its default is
    ""): a VACE task that does not say gets them enabled; one that does is passed as given (the child refuses
    letters that would drop a given file)."""
    assert parse_params("vace", {"prompt": "a", "video_guide": VID}).settings["video_prompt_type"] == "V"
    both = parse_params("vace_21", {"prompt": "a", "video_guide": VID, "video_mask": VID})
    assert both.settings["video_prompt_type"] == "VA"
    assert parse_params("vace", {"prompt": "a", "video_guide": VID, "video_prompt_type": "PV"}).settings[
        "video_prompt_type"] == "PV"
    assert "video_prompt_type" not in parse_params("t2v", {"prompt": "a"}).settings
    refs = parse_params("vace", {"prompt": "a", "video_guide": VID, "image_refs": [VID.replace(".mp4", ".png")]})
    assert refs.settings["video_prompt_type"] == "VI"  # "I": Wan2GP reads image_refs only with it
    all3 = parse_params("vace", {"prompt": "a", "video_guide": VID, "video_mask": VID, "image_refs": [VID]})
    assert all3.settings["video_prompt_type"] == "VAI"
