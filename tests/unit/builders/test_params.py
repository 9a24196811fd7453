"""The comfyui_* contracts: every bad parameter is refused before anything runs, with a message naming the key."""

from __future__ import annotations

from typing import Any

import pytest

from comfy_worker.builders import TASK_TYPES, accepted_keys, build, resolve
from comfy_worker.builders.params import I2V, S2V, T2V, TI2V, round_frames
from comfy_worker.errors import InputRejected

IMG = {"url": "https://example.com/a.png"}
NEEDS = {
    "comfyui_i2v": {"image": IMG},
    "comfyui_t2v": {},
    "comfyui_ti2v": {},
    "comfyui_s2v": {"image": IMG, "audio": {"storage_path": "inputs/a.wav"}},
    "comfyui_flf2v": {"image": IMG, "last_image": {"base64": "aGk="}},
}


def refused(task_type: str, **params: Any) -> InputRejected:
    with pytest.raises(InputRejected) as exc:
        resolve(task_type, {**NEEDS[task_type], **params})
    assert exc.value.retryable is False
    return exc.value


@pytest.mark.parametrize("task_type", TASK_TYPES)
def test_defaults_resolve_and_seed_is_recorded(task_type: str) -> None:
    r = resolve(task_type, NEEDS[task_type])
    assert isinstance(r.values["seed"], int) and f"seed drawn at random: {r.values['seed']}" in r.notes
    assert set(r.media) == set(NEEDS[task_type])
    assert resolve(task_type, {**NEEDS[task_type], "seed": -1}).values["seed"] != -1
    assert resolve(task_type, {**NEEDS[task_type], "seed": 42}).values["seed"] == 42


@pytest.mark.parametrize("task_type", TASK_TYPES)
def test_unknown_key_names_the_key_and_the_accepted_ones(task_type: str) -> None:
    exc = refused(task_type, guidance=7)
    assert "params.guidance is not accepted" in str(exc) and exc.details["field"] == "guidance"
    for key in accepted_keys(task_type):
        assert key in str(exc)


@pytest.mark.parametrize(
    ("task_type", "params", "key", "says"),
    [
        (T2V, {"width": 5000}, "width", "out of range: 5000 (allowed 64 to 2048)"),
        (T2V, {"width": 830}, "width", "multiple of 16: 830 (use 816 or 832)"),
        (TI2V, {"height": 720}, "height", "multiple of 32: 720 (use 704 or 736)"),
        (T2V, {"num_frames": 0}, "num_frames", "out of range"),
        (T2V, {"num_frames": 80.5}, "num_frames", "whole number"),
        (T2V, {"steps": "20"}, "steps", "whole number"),
        (T2V, {"cfg_scale": 31}, "cfg_scale", "out of range: 31"),
        (T2V, {"fps": 0}, "fps", "out of range"),
        (T2V, {"seed": -2}, "seed", "out of range"),
        (T2V, {"seed": 2**64}, "seed", "out of range"),
        (T2V, {"use_lora": "yes"}, "use_lora", "true or false"),
        (T2V, {"boundary_step": 20}, "boundary_step", "below steps (20)"),
        (T2V, {"steps": 4, "boundary_step": 4}, "boundary_step", "below steps (4)"),
        (T2V, {"sampler": "euler; rm -rf"}, "sampler", "sampler name"),
        (T2V, {"high_noise_model": "../../etc/passwd.safetensors"}, "high_noise_model", "inside ComfyUI's models"),
        (T2V, {"vae_model": "vae.txt"}, "vae_model", "must name a model file"),
        (T2V, {"loras": {"name": "a.safetensors"}}, "loras", "list of at most 8"),
        (T2V, {"loras": [{"strength": 1}]}, "loras[0]", "{name, strength}"),
        (T2V, {"loras": [{"name": "a.safetensors", "strength": 11}]}, "loras[0].strength", "out of range"),
        (T2V, {"loras": [{"name": "a.safetensors", "model": "mid"}]}, "loras[0].model", "high, low or both"),
        (TI2V, {"loras": [{"name": "a.safetensors", "model": "high"}]}, "loras[0].model", "not accepted"),
        (T2V, {"filename_prefix": "../out"}, "filename_prefix", "no '..'"),
        (T2V, {"prompt": 5}, "prompt", "must be text"),
        (T2V, {"timeout_s": 0}, "timeout_s", "out of range"),
        (I2V, {"image": {"url": "https://x/a.png", "base64": "aGk="}}, "image", "exactly one of"),
        (I2V, {"image": {"path": "/etc/passwd"}}, "image", "unknown keys: path"),
        (I2V, {"image": "a.png"}, "image", "must be an object"),
        (I2V, {"image_url": "https://x/b.png"}, "image_url", "both set"),
        (TI2V, {"use_lora": True}, "use_lora", "not accepted"),
        (TI2V, {"boundary_step": 5}, "boundary_step", "not accepted"),
        (S2V, {"high_noise_model": "x.safetensors"}, "high_noise_model", "not accepted"),
        (T2V, {"image": IMG}, "image", "not accepted"),
    ],
)
def test_bad_values_are_refused_naming_the_key(task_type: str, params: dict, key: str, says: str) -> None:
    exc = refused(task_type, **params)
    assert f"params.{key} " in str(exc) and says in str(exc), str(exc)
    assert exc.details["field"] == key


@pytest.mark.parametrize(("task_type", "key"), [(I2V, "image"), (S2V, "audio"), ("comfyui_flf2v", "last_image")])
def test_missing_media_is_refused(task_type: str, key: str) -> None:
    params = {k: v for k, v in NEEDS[task_type].items() if k != key}
    with pytest.raises(InputRejected, match=rf"params\.{key} is required"):
        resolve(task_type, params)


def test_unknown_task_type_and_non_object_params() -> None:
    with pytest.raises(InputRejected, match=r"unknown Wan 2\.2 task type 'comfyui_x2v'"):
        resolve("comfyui_x2v", {})
    with pytest.raises(InputRejected, match="params must be a JSON object"):
        resolve(T2V, ["width", 1])  # type: ignore[arg-type]


def test_frames_rounded_to_4k_plus_1_with_a_note() -> None:
    assert [round_frames(n) for n in (1, 2, 3, 4, 5, 80, 81, 82, 83)] == [1, 1, 5, 5, 5, 81, 81, 81, 85]
    r = resolve(T2V, {"num_frames": 80, "seed": 1})
    assert r.values["num_frames"] == 81 and r.notes == ["num_frames 80 rounded to 81 (Wan renders 4k+1 frames)"]
    s = resolve(S2V, {**NEEDS[S2V], "num_frames": 100, "seed": 1})
    assert s.values["num_frames"] == 100 and "sampled as 2 window(s) of 77 frames, the video cut to 100" in s.notes[0]


def test_use_lora_sets_the_templates_turbo_settings_and_explicit_values_win() -> None:
    r = resolve(I2V, {**NEEDS[I2V], "use_lora": True})
    assert (r.values["steps"], r.values["cfg_scale"], r.values["boundary_step"]) == (4, 1.0, 2)
    r = resolve(I2V, {**NEEDS[I2V], "use_lora": True, "steps": 6, "boundary_step": 3})
    assert (r.values["steps"], r.values["boundary_step"]) == (6, 3)
    assert resolve(S2V, NEEDS[S2V]).values["steps"] == 4  # the s2v template runs its 4-step LoRA by default
    assert resolve(S2V, {**NEEDS[S2V], "use_lora": False}).values["steps"] == 20


def test_seed_style_aliases() -> None:
    assert resolve(I2V, {"image_url": "https://x/a.png"}).media == {"image": {"url": "https://x/a.png"}}
    assert resolve(I2V, {"image_base64": "aGk="}).media == {"image": {"base64": "aGk="}}
    assert resolve(I2V, {"image": "https://x/a.png"}).media == {"image": {"url": "https://x/a.png"}}


@pytest.mark.parametrize("url", ["HTTPS://x/a.png", "Http://x/a.png", "S3://bucket/a.png", "Az://c/a.png"])
def test_url_scheme_is_case_insensitive(url: str) -> None:
    # a scheme in capitals is the same URL (RFC 3986): it is fetched, not taken for a file name in ComfyUI's input
    assert resolve(I2V, {"image": url}).media == {"image": {"url": url}}
    graph = build("comfyui_i2v", {"image": url, "seed": 1}, {"image": "comfy_worker/t1/a.png"})
    assert any(n["inputs"].get("image") == "comfy_worker/t1/a.png" for n in graph.values())
