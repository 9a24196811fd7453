# ruff: noqa: RUF001 (the templates' Chinese prompts use full-width commas)
"""The contract of each ``comfyui_*`` task type: which keys it takes, their ranges and the official templates'
defaults. Pure: no I/O, no engine calls.

:func:`resolve` turns raw params (a task row's ``params``, ``--set`` values, builder keyword arguments) into a
:class:`Resolved`: every value checked and defaulted, the seed drawn when it is -1 or absent, ``num_frames``
rounded to Wan's 4k+1 rule, and the media inputs (``image`` / ``last_image`` / ``audio``) separated out. Every
refusal is an :class:`InputRejected` naming the key and the fix; unknown keys name the accepted ones.

Defaults come from ComfyUI's official templates (PyPI ``comfyui-workflow-templates-json``:
``video_wan2_2_14B_i2v`` / ``_14B_t2v`` / ``_5B_ti2v`` / ``_14B_s2v`` / ``_14B_flf2v``); ``use_lora`` switches to
the lightx2v 4-step LoRAs with the templates' "turbo" settings (4 steps, cfg 1, HIGH/LOW split 2/2).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from comfy_worker.config import is_input_url
from comfy_worker.errors import InputRejected

I2V, T2V, TI2V, S2V, FLF2V = "comfyui_i2v", "comfyui_t2v", "comfyui_ti2v", "comfyui_s2v", "comfyui_flf2v"
TASK_TYPES = (I2V, T2V, TI2V, S2V, FLF2V)
MEDIA_KEYS = ("image", "last_image", "audio")
MEDIA_SOURCES = ("url", "storage_path", "base64")
SEED_MAX = 2**64 - 1
S2V_WINDOW = 77  # frames per WanSoundImageToVideo(Extend) window, as in the official template


def s2v_windows(num_frames: int) -> int:
    """How many 77-frame WanSoundImageToVideo(Extend) windows cover ``num_frames``."""
    return -(-num_frames // S2V_WINDOW)


MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft")

NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)
TEXT_ENCODER = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
WAN21_VAE = "wan_2.1_vae.safetensors"

# Per task type: the template's defaults. Keys absent here are not accepted by that type.
_I2V_MODELS = {
    "high_noise_model": "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
    "low_noise_model": "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors",
    "high_noise_lora": "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors",
    "low_noise_lora": "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors",
}
# The HIGH/LOW 14B templates' (i2v, t2v; flf2v changes cfg and shift) sampling settings.
_14B_SETTINGS = {
    "width": 640, "height": 640, "num_frames": 81, "fps": 16.0, "steps": 20, "cfg_scale": 3.5,
    "boundary_step": 10, "shift": 5.0, "sampler": "euler", "scheduler": "simple", "use_lora": False,
}  # fmt: skip
DEFAULTS: dict[str, dict[str, Any]] = {
    I2V: {
        "prompt": "The white dragon warrior stands still, eyes full of determination and strength. The camera slowly "
        "moves closer or circles around the warrior, highlighting the powerful presence and heroic spirit of the "
        "character.",
        **_14B_SETTINGS,
        **_I2V_MODELS, "text_encoder": TEXT_ENCODER, "vae_model": WAN21_VAE,
    },
    T2V: {
        "prompt": "Beautiful young European woman with honey blonde hair gracefully turning her head back over "
        "shoulder, gentle smile, bright eyes looking at camera. Hair flowing in slow motion as she turns. Soft natural "
        "lighting, clean background, cinematic slow-motion portrait.",
        **_14B_SETTINGS,
        "negative_prompt": NEGATIVE_PROMPT + "，裸露，NSFW",  # the t2v template's own
        "high_noise_model": "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
        "low_noise_model": "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors",
        "high_noise_lora": "wan2.2_t2v_lightx2v_4steps_lora_v1.1_high_noise.safetensors",
        "low_noise_lora": "wan2.2_t2v_lightx2v_4steps_lora_v1.1_low_noise.safetensors",
        "text_encoder": TEXT_ENCODER, "vae_model": WAN21_VAE,
    },
    TI2V: {
        "prompt": "Low contrast. In a retro 1970s-style subway station, a street musician plays in dim colors and "
        "rough textures. He wears an old jacket, playing guitar with focus. Commuters hurry by, and a small crowd "
        "gathers to listen. The camera slowly moves right, capturing the blend of music and city noise, with old "
        "subway signs and mottled walls in the background.",
        "width": 1280, "height": 704, "num_frames": 121, "fps": 24.0, "steps": 20, "cfg_scale": 5.0,
        "shift": 8.0, "sampler": "uni_pc", "scheduler": "simple",
        "diffusion_model": "wan2.2_ti2v_5B_fp16.safetensors", "text_encoder": TEXT_ENCODER,
        "vae_model": "wan2.2_vae.safetensors",
    },
    S2V: {
        "prompt": "The man is playing the guitar. He looks down at his hands playing the guitar and sings "
        "affectionately and gently.",
        "width": 640, "height": 640, "num_frames": S2V_WINDOW, "fps": 16.0, "steps": 20, "cfg_scale": 6.0,
        "shift": 8.0, "sampler": "uni_pc", "scheduler": "simple", "use_lora": True,
        "diffusion_model": "wan2.2_s2v_14B_fp8_scaled.safetensors",
        "lora": "wan2.2_t2v_lightx2v_4steps_lora_v1.1_high_noise.safetensors",
        "audio_encoder": "wav2vec2_large_english_fp16.safetensors", "text_encoder": TEXT_ENCODER,
        "vae_model": WAN21_VAE,
    },
    FLF2V: {
        "prompt": "冰晶组成的小猫突然被惊醒，愤怒的它抬头，渐渐长出色彩毛发变成为一个巨兽，"
        "像发现危险一样呲牙，瞪大眼睛",
        **_14B_SETTINGS, "cfg_scale": 4.0, "shift": 8.0,
        **_I2V_MODELS, "text_encoder": TEXT_ENCODER, "vae_model": WAN21_VAE,
    },
}  # fmt: skip
# The templates' 4-step LoRA settings (values a caller sets explicitly still win).
LORA_SETTINGS: dict[str, dict[str, Any]] = {
    I2V: {"steps": 4, "cfg_scale": 1.0, "boundary_step": 2},
    T2V: {"steps": 4, "cfg_scale": 1.0, "boundary_step": 2},
    FLF2V: {"steps": 4, "cfg_scale": 1.0, "boundary_step": 2, "shift": 5.0},
    S2V: {"steps": 4, "cfg_scale": 1.0},
}
MEDIA: dict[str, dict[str, bool]] = {  # media key → required
    I2V: {"image": True},
    T2V: {},
    TI2V: {"image": False},
    S2V: {"image": True, "audio": True},
    FLF2V: {"image": True, "last_image": True},
}
COMMON_KEYS = (
    "negative_prompt", "seed", "loras", "filename_prefix", "timeout_s", "stall_timeout_s", "compile", "cache", "speed",
)  # fmt: skip
# Step caching by core nodes (comfy_extras/nodes_easycache.py): their defaults, and the kinds accepted.
CACHE_KINDS = {"easycache": "EasyCache", "lazycache": "LazyCache"}
CACHE_DEFAULTS = {"reuse_threshold": 0.2, "start_percent": 0.15, "end_percent": 0.95}
# speed: "fast" fills in these params (values the caller sets explicitly win), plus the type's 4-step LoRA
# (use_lora) where it has one. What each buys, and its fidelity, is in docs/benchmarks-gpu.md ("Faster sampling").
SPEED_PRESETS: dict[str, dict[str, Any]] = {"default": {}, "fast": {"compile": True}}
# Model names the caller may override (the LoRA names of use_lora are fixed by the templates).
_INTERNAL = ("high_noise_lora", "low_noise_lora", "lora")

MAX_FRAMES = 1001
_INT_RANGES = {"width": (64, 2048), "height": (64, 2048), "num_frames": (1, MAX_FRAMES), "steps": (1, 200)}
_FLOAT_RANGES = {"fps": (1.0, 120.0), "cfg_scale": (0.0, 30.0), "shift": (0.0, 100.0)}
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_+\-]*$")
_PREFIX = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-./]*$")


@dataclass(frozen=True)
class Resolved:
    """A task's checked parameters: ``values`` are the builder's keyword arguments (media excluded)."""

    task_type: str
    values: dict[str, Any]
    media: dict[str, dict[str, Any]] = field(default_factory=dict)  # key → {url | storage_path | base64[, filename]}
    notes: list[str] = field(default_factory=list)  # what was adjusted (rounded frames, drawn seed)


def accepted_keys(task_type: str) -> list[str]:
    """Every key ``task_type`` accepts, in a stable order (the media keys and their seed-style aliases first)."""
    media = list(MEDIA[task_type])
    aliases = ["image_url", "image_base64"] if "image" in media else []
    own = [k for k in DEFAULTS[task_type] if k not in _INTERNAL and k not in COMMON_KEYS]
    return [*media, *aliases, *own, *COMMON_KEYS]


def _refuse(task_type: str, key: str, problem: str) -> InputRejected:
    return InputRejected(f"{task_type}: params.{key} {problem}", details={"field": key, "task_type": task_type})


def _int(task_type: str, key: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or float(value) != int(value):
        raise _refuse(task_type, key, f"must be a whole number from {lo} to {hi}, got {value!r}")
    if not lo <= int(value) <= hi:
        raise _refuse(task_type, key, f"is out of range: {value} (allowed {lo} to {hi})")
    return int(value)


def _float(task_type: str, key: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse(task_type, key, f"must be a number from {lo:g} to {hi:g}, got {value!r}")
    if not lo <= float(value) <= hi:
        raise _refuse(task_type, key, f"is out of range: {value} (allowed {lo:g} to {hi:g})")
    return float(value)


def _model_name(task_type: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _refuse(task_type, key, f"must be a model file name (e.g. x.safetensors), got {value!r}")
    parts = value.replace("\\", "/").split("/")
    if value.startswith("/") or ".." in parts:
        raise _refuse(task_type, key, f"must be a file name inside ComfyUI's models folder, got {value!r}")
    if not value.lower().endswith(MODEL_EXTENSIONS):
        raise _refuse(task_type, key, f"must name a model file ({', '.join(MODEL_EXTENSIONS)}), got {value!r}")
    return value


def _media(task_type: str, key: str, value: Any) -> dict[str, Any]:
    if is_input_url(value):
        return {"url": value}
    if not isinstance(value, dict):
        raise _refuse(task_type, key, "must be an object with one of url, storage_path or base64 (optionally filename)")
    sources = [k for k in MEDIA_SOURCES if value.get(k)]
    extra = sorted(set(value) - {*MEDIA_SOURCES, "filename"})
    if len(sources) != 1 or extra:
        raise _refuse(
            task_type,
            key,
            "needs exactly one of url, storage_path or base64 (and optionally filename)"
            + (f"; unknown keys: {', '.join(extra)}" if extra else ""),
        )
    return {k: v for k, v in value.items() if k in (*MEDIA_SOURCES, "filename") and v}


def _loras(task_type: str, value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or len(value) > 8:
        raise _refuse(task_type, "loras", "must be a list of at most 8 {name, strength} objects")
    pairs = task_type in (I2V, T2V, FLF2V)
    out = []
    for i, item in enumerate(value):
        key = f"loras[{i}]"
        allowed = {"name", "strength", "model"} if pairs else {"name", "strength"}
        if not isinstance(item, dict) or "name" not in item:
            raise _refuse(task_type, key, "must be an object {name, strength}")
        extra = sorted(set(item) - allowed)
        if extra:
            raise _refuse(task_type, f"{key}.{extra[0]}", f"is not accepted; accepted: {', '.join(sorted(allowed))}")
        lora = {
            "name": _model_name(task_type, f"{key}.name", item["name"]),
            "strength": _float(task_type, f"{key}.strength", item.get("strength", 1.0), -10.0, 10.0),
        }
        if pairs:
            model = item.get("model", "both")
            if model not in ("high", "low", "both"):
                raise _refuse(task_type, f"{key}.model", f"must be high, low or both, got {model!r}")
            lora["model"] = model
        out.append(lora)
    return out


def speed_preset(task_type: str, speed: str) -> dict[str, Any]:
    """The params ``speed`` stands for on ``task_type`` (``fast``: the preset plus the 4-step LoRA if it has one)."""
    preset = dict(SPEED_PRESETS[speed])
    if speed == "fast" and task_type in LORA_SETTINGS:
        preset["use_lora"] = True
    return preset


def _cache(task_type: str, value: Any) -> dict[str, Any] | None:
    """``"easycache"`` / ``"lazycache"`` / ``{"kind": ..., "reuse_threshold", "start_percent", "end_percent"}``
    (None or ``"none"``: off) → the node's settings, defaults filled in."""
    if value is None or value == "none":
        return None
    if isinstance(value, str):
        value = {"kind": value}
    kinds = ", ".join(CACHE_KINDS)
    if not isinstance(value, dict) or value.get("kind") not in CACHE_KINDS:
        raise _refuse(task_type, "cache", f'must be one of {kinds} or {{"kind": ..., "reuse_threshold": 0.2, '
                      f'"start_percent": 0.15, "end_percent": 0.95}}, got {value!r}')  # fmt: skip
    extra = sorted(set(value) - {"kind", *CACHE_DEFAULTS})
    if extra:
        raise _refuse(task_type, f"cache.{extra[0]}", f"is not accepted; accepted: kind, {', '.join(CACHE_DEFAULTS)}")
    out: dict[str, Any] = {"kind": value["kind"]}
    for key, default in CACHE_DEFAULTS.items():
        hi = 3.0 if key == "reuse_threshold" else 1.0
        out[key] = _float(task_type, f"cache.{key}", value.get(key, default), 0.0, hi)
    if out["start_percent"] >= out["end_percent"]:
        raise _refuse(task_type, "cache.start_percent", f"must be below cache.end_percent ({out['end_percent']:g}): "
                      "the cache works between the two points of the schedule")  # fmt: skip
    return out


def round_frames(n: int) -> int:
    """The nearest frame count Wan accepts (4k+1); ties round up."""
    return max(1, 4 * ((n - 1 + 2) // 4) + 1)


def resolve(task_type: str, params: Mapping[str, Any] | None) -> Resolved:
    """Check ``params`` against ``task_type``'s contract and fill in the template's defaults (see module doc)."""
    if task_type not in TASK_TYPES:
        raise InputRejected(f"unknown Wan 2.2 task type {task_type!r}; known: {', '.join(TASK_TYPES)}")
    if not isinstance(params, Mapping | type(None)):
        raise InputRejected(f"{task_type}: params must be a JSON object, got {type(params).__name__}")
    raw = dict(params or {})
    accepted = accepted_keys(task_type)
    for key in raw:
        if key not in accepted:
            raise _refuse(task_type, key, f"is not accepted; accepted keys: {', '.join(accepted)}")
    media: dict[str, dict[str, Any]] = {}
    for alias, source in (("image_url", "url"), ("image_base64", "base64")):
        if alias in raw:
            if "image" in raw:
                raise _refuse(task_type, alias, "and params.image are both set: give the image once")
            raw["image"] = {source: raw.pop(alias)}
    for key, required in MEDIA[task_type].items():
        if raw.get(key) is not None:
            media[key] = _media(task_type, key, raw.pop(key))
        elif required:
            raise _refuse(task_type, key, "is required: give {url | storage_path | base64} of the input file")
        raw.pop(key, None)

    values = {"negative_prompt": NEGATIVE_PROMPT, **DEFAULTS[task_type]}
    speed = raw.pop("speed", "default")
    if speed not in SPEED_PRESETS:
        raise _refuse(task_type, "speed", f"must be one of {', '.join(SPEED_PRESETS)}, got {speed!r}")
    for key, value in speed_preset(task_type, speed).items():
        raw.setdefault(key, value)
    use_lora = raw.get("use_lora", values.get("use_lora", False))
    if not isinstance(use_lora, bool):
        raise _refuse(task_type, "use_lora", f"must be true or false, got {use_lora!r}")
    if use_lora:
        values.update(LORA_SETTINGS.get(task_type, {}))
    notes: list[str] = []
    for key, value in raw.items():
        if key in _INT_RANGES:
            values[key] = _int(task_type, key, value, *_INT_RANGES[key])
        elif key in _FLOAT_RANGES:
            values[key] = _float(task_type, key, value, *_FLOAT_RANGES[key])
        elif key in ("prompt", "negative_prompt"):
            if not isinstance(value, str) or len(value) > 20000:
                raise _refuse(task_type, key, "must be text of at most 20000 characters")
            values[key] = value
        elif key in ("sampler", "scheduler"):
            if not isinstance(value, str) or not _NAME.match(value):
                raise _refuse(task_type, key, f"must be a ComfyUI {key} name (e.g. euler, simple), got {value!r}")
            values[key] = value
        elif key.endswith(("_model", "_encoder")):
            values[key] = _model_name(task_type, key, value)
        elif key == "use_lora":
            values[key] = value
        elif key == "compile":  # torch.compile of each diffusion model (core TorchCompileModel, inductor)
            if not isinstance(value, bool):
                raise _refuse(task_type, key, f"must be true or false, got {value!r}")
            values[key] = value
        elif key == "cache":
            values[key] = _cache(task_type, value)
        elif key == "loras":
            values[key] = _loras(task_type, value)
        elif key == "boundary_step":
            values[key] = _int(task_type, key, value, 1, 199)
        elif key == "seed":
            if value is not None and value != -1:
                values[key] = _int(task_type, key, value, 0, SEED_MAX)
        elif key == "filename_prefix":
            parts = str(value).split("/")
            if not isinstance(value, str) or not _PREFIX.match(value) or ".." in parts or len(value) > 200:
                raise _refuse(task_type, key, f"must be a relative path like video/my_clip (no '..'), got {value!r}")
            values[key] = value
        elif key in ("timeout_s", "stall_timeout_s"):
            values[key] = _float(task_type, key, value, 1.0, 86400.0)
    for dim in ("width", "height"):
        step = 32 if task_type == TI2V else 16
        if values[dim] % step:
            lo = values[dim] - values[dim] % step
            raise _refuse(task_type, dim, f"must be a multiple of {step}: {values[dim]} (use {lo} or {lo + step})")
    if "boundary_step" in values and not 1 <= values["boundary_step"] < values["steps"]:
        raise _refuse(
            task_type,
            "boundary_step",
            f"must be at least 1 and below steps ({values['steps']}): the HIGH-noise model runs steps "
            f"0..boundary_step, the LOW-noise model the rest; got {values['boundary_step']}",
        )
    if task_type == S2V:
        # whole 77-frame windows are sampled; the video is cut to num_frames, so it lasts as long as the audio
        # (the template keeps every decoded frame: 80 per window less 2, up to a window of silence at the end)
        windows = s2v_windows(values["num_frames"])
        if values["num_frames"] != windows * S2V_WINDOW:
            notes.append(
                f"num_frames {values['num_frames']} sampled as {windows} window(s) of {S2V_WINDOW} frames, "
                f"the video cut to {values['num_frames']} frames"
            )
    else:
        rounded = round_frames(values["num_frames"])
        if rounded != values["num_frames"]:
            notes.append(f"num_frames {values['num_frames']} rounded to {rounded} (Wan renders 4k+1 frames)")
            values["num_frames"] = rounded
    if values.get("seed") is None:
        values["seed"] = secrets.randbelow(2**53)  # exact in JSON numbers everywhere
        notes.append(f"seed drawn at random: {values['seed']}")
    values.setdefault("loras", [])
    values.setdefault("filename_prefix", f"video/{task_type}")
    for key in ("timeout_s", "stall_timeout_s"):
        values.pop(key, None)
    return Resolved(task_type, values, media, notes)
