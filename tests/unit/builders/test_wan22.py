"""The Wan 2.2 builders: graphs pass our validator against ComfyUI 0.3.64's /object_info (tests/fixtures,
with the graph's models installed), use core nodes only, and have the shapes of the official templates."""

from __future__ import annotations

from typing import Any

import pytest

from comfy_worker.builders import build, build_i2v, build_s2v, build_t2v, build_ti2v
from comfy_worker.engine import problems
from comfy_worker.errors import InputRejected
from tests.wan_cases import AUDIO, CASES, IMAGE, object_info_0364, with_models


def of_type(graph: dict[str, Any], class_type: str) -> list[dict[str, Any]]:
    return [n for n in graph.values() if n["class_type"] == class_type]


def source(graph: dict[str, Any], link: list[Any]) -> dict[str, Any]:
    return graph[link[0]]


@pytest.mark.parametrize("case", sorted(CASES))
def test_graph_valid_against_0364_object_info(case: str) -> None:
    graph = CASES[case]()
    info = object_info_0364()
    assert {n["class_type"] for n in graph.values()} <= set(info)  # core nodes only
    assert problems(graph, with_models(info, graph), empty_model_lists="missing") == []
    assert all(n["_meta"]["title"] for n in graph.values())
    missing = problems(graph, info, empty_model_lists="missing")  # no models installed: each one is named
    assert missing and all("is not installed" in p["message"] and "models/" in p["message"] for p in missing)


def test_14b_runs_high_then_low_with_the_split() -> None:
    g = build_t2v("a cat", steps=20, boundary_step=10, cfg_scale=3.5, seed=7)
    high, low = of_type(g, "KSamplerAdvanced")
    assert (high["inputs"]["add_noise"], high["inputs"]["return_with_leftover_noise"]) == ("enable", "enable")
    assert (high["inputs"]["start_at_step"], high["inputs"]["end_at_step"], high["inputs"]["noise_seed"]) == (0, 10, 7)
    assert (low["inputs"]["add_noise"], low["inputs"]["return_with_leftover_noise"]) == ("disable", "disable")
    assert (low["inputs"]["start_at_step"], low["inputs"]["end_at_step"]) == (10, 20)
    assert source(g, low["inputs"]["latent_image"]) is high
    names = [source(g, source(g, s["inputs"]["model"])["inputs"]["model"])["inputs"]["unet_name"] for s in (high, low)]
    assert names == [f"wan2.2_t2v_{x}_noise_14B_fp8_scaled.safetensors" for x in ("high", "low")]
    assert of_type(g, "CLIPLoader")[0]["inputs"]["type"] == "wan"
    assert of_type(g, "ModelSamplingSD3")[0]["inputs"]["shift"] == 5.0


def test_use_lora_inserts_the_4_step_loras() -> None:
    off = build_i2v(IMAGE, seed=1)
    on = build_i2v(IMAGE, use_lora=True, seed=1)
    assert of_type(off, "LoraLoaderModelOnly") == []
    loras = sorted(n["inputs"]["lora_name"] for n in of_type(on, "LoraLoaderModelOnly"))
    assert loras == [
        "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors",
        "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors",
    ]
    high, low = of_type(on, "KSamplerAdvanced")
    assert (high["inputs"]["steps"], high["inputs"]["cfg"], high["inputs"]["end_at_step"]) == (4, 1.0, 2)
    assert low["inputs"]["start_at_step"] == 2


def test_user_loras_go_on_the_model_they_name() -> None:
    g = build_i2v(IMAGE, loras=[{"name": "h.safetensors", "model": "high"}, {"name": "b.safetensors"}], seed=1)
    per_model: dict[str, list[str]] = {}
    for lora in of_type(g, "LoraLoaderModelOnly"):
        node = lora
        while node["class_type"] != "UNETLoader":
            node = source(g, node["inputs"]["model"])
        per_model.setdefault(node["inputs"]["unet_name"].split("_")[2], []).append(lora["inputs"]["lora_name"])
    assert per_model == {"high": ["h.safetensors", "b.safetensors"], "low": ["b.safetensors"]}


def test_ti2v_image_is_optional() -> None:
    without, with_image = build_ti2v("x", seed=1), build_ti2v("x", image=IMAGE, seed=1)
    assert "start_image" not in of_type(without, "Wan22ImageToVideoLatent")[0]["inputs"]
    assert of_type(without, "LoadImage") == []
    latent = of_type(with_image, "Wan22ImageToVideoLatent")[0]
    assert source(with_image, latent["inputs"]["start_image"])["inputs"] == {"image": IMAGE}
    assert of_type(with_image, "KSampler")[0]["inputs"]["sampler_name"] == "uni_pc"


def test_s2v_extends_windows_and_keeps_the_audio_in_the_video() -> None:
    one, three = build_s2v(IMAGE, AUDIO, seed=3), build_s2v(IMAGE, AUDIO, num_frames=200, seed=3)
    assert of_type(one, "WanSoundImageToVideoExtend") == [] and len(of_type(one, "KSampler")) == 1
    extends = of_type(three, "WanSoundImageToVideoExtend")
    assert len(extends) == 2 and [s["inputs"]["seed"] for s in of_type(three, "KSampler")] == [3, 4, 5]
    assert all(e["inputs"]["length"] == 77 for e in extends)
    second = extends[1]["inputs"]["video_latent"]
    assert source(three, second)["class_type"] == "LatentConcat"  # window 3 continues windows 1+2
    video = of_type(three, "CreateVideo")[0]
    assert source(three, video["inputs"]["audio"])["class_type"] == "LoadAudio"
    # 3 windows decode to 241 frames; the template's first 3 are dropped and the video cut to the 200 asked for
    assert of_type(three, "ImageFromBatch")[0]["inputs"] | {"image": None} == {
        "image": None, "batch_index": 3, "length": 200}
    assert of_type(one, "ImageFromBatch")[0]["inputs"]["length"] == 77


def test_build_from_task_params_and_media_names() -> None:
    g = build("comfyui_i2v", {"image": {"url": "https://x/a.png"}, "seed": 1}, {"image": "comfy_worker/t1/a.png"})
    assert of_type(g, "LoadImage")[0]["inputs"]["image"] == "comfy_worker/t1/a.png"
    with pytest.raises(InputRejected, match=r"params\.image is required"):
        build("comfyui_i2v", {"seed": 1})


@pytest.mark.parametrize("kind", ["easycache", "lazycache"])
@pytest.mark.parametrize("task_type", ["comfyui_i2v", "comfyui_ti2v", "comfyui_s2v"])
def test_cache_param_adds_the_core_step_cache_to_each_model(task_type: str, kind: str) -> None:
    from comfy_worker.builders.params import MEDIA

    media = {k: "x.png" if k != "audio" else "x.wav" for k in MEDIA[task_type]}
    plain = build(task_type, {"seed": 1}, media)
    assert not [n for n in plain.values() if n["class_type"] in ("EasyCache", "LazyCache")]
    g = build(task_type, {"seed": 1, "cache": {"kind": kind, "reuse_threshold": 0.3}, "compile": True}, media)
    node = {"easycache": "EasyCache", "lazycache": "LazyCache"}[kind]
    caches = {k: n for k, n in g.items() if n["class_type"] == node}
    assert len(caches) == len(of_type(g, "UNETLoader"))
    for c in caches.values():
        assert c["inputs"] | {"model": None} == {"model": None, "reuse_threshold": 0.3, "start_percent": 0.15,
                                                 "end_percent": 0.95, "verbose": False}  # fmt: skip
        assert source(g, c["inputs"]["model"])["class_type"] == "ModelSamplingSD3"
    for compiled in of_type(g, "TorchCompileModel"):  # the cache sits between the shift and torch.compile
        assert source(g, compiled["inputs"]["model"])["class_type"] == node
    info = object_info_0364()
    assert problems(g, with_models(info, g), empty_model_lists="missing") == []


@pytest.mark.parametrize(
    ("cache", "field"),
    [("teacache", "params.cache must be one of easycache, lazycache"),
     ({"kind": "easycache", "skip": 2}, "params.cache.skip is not accepted"),
     ({"kind": "easycache", "reuse_threshold": 4}, "params.cache.reuse_threshold is out of range"),
     ({"kind": "lazycache", "start_percent": 0.9, "end_percent": 0.5}, "params.cache.start_percent must be below")],
)  # fmt: skip
def test_cache_param_errors_name_the_field(cache: Any, field: str) -> None:
    with pytest.raises(InputRejected, match=field.replace(".", r"\.")):
        build("comfyui_t2v", {"cache": cache}, {})


def test_speed_fast_fills_in_the_preset_and_the_4_step_lora_and_explicit_values_win() -> None:
    from comfy_worker.builders.params import SPEED_PRESETS, resolve

    fast = resolve("comfyui_i2v", {"image": {"url": "https://x/y.png"}, "speed": "fast", "seed": 1}).values
    assert fast["use_lora"] is True and fast["steps"] == 4  # the 4-step LoRA's settings come with it
    for key, value in SPEED_PRESETS["fast"].items():
        assert fast[key] == value
    ti2v = resolve("comfyui_ti2v", {"speed": "fast", "seed": 1}).values
    assert "use_lora" not in ti2v or not ti2v["use_lora"]  # the 5B has no 4-step LoRA
    mine = resolve("comfyui_i2v", {"image": {"url": "https://x/y.png"}, "speed": "fast", "use_lora": False,
                                   "compile": False, "seed": 1}).values  # fmt: skip
    assert mine["use_lora"] is False and mine["compile"] is False and mine["steps"] != 4
    assert resolve("comfyui_t2v", {"seed": 1}).values == resolve("comfyui_t2v", {"seed": 1, "speed": "default"}).values
    with pytest.raises(InputRejected, match=r"params\.speed must be one of default, fast, got 'turbo'"):
        resolve("comfyui_t2v", {"speed": "turbo"})
