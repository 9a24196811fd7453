"""Wan2GP task types: which Wan2GP model each one runs and the params it accepts.

:func:`parse_params` is pure: it checks a task's params against its type's contract and returns a
:class:`WanJob` (model, Wan2GP settings, the media and LoRAs still to fetch), or raises
:class:`~comfy_worker.errors.InputRejected` naming the key and the fix (unknown keys name the accepted ones).
:func:`build_request` then fetches what the job needs — media into the task's work directory through
:mod:`comfy_worker.inputs` (size cap, private-address refusal, retries), LoRA URLs into Wan2GP's LoRA folder
under ``WAN2GP_LORA_MAX_BYTES`` — and returns the :class:`GenerationRequest` the engine runs.

Task types and models (current Wan2GP names; Headless-Wan2GP's older Wan2GP called ``i2v`` ``i2v_14B``):

=================  ========================  ===========================================================
task type          Wan2GP model              media params
=================  ========================  ===========================================================
t2v                t2v                       —
t2v_22             t2v_2_2                   —
i2v                i2v                       image_start (required), image_end
i2v_22             i2v_2_2                   image_start (required), image_end
vace, vace_22      vace_14B_cocktail_2_2     video_guide (required), video_mask, image_refs
vace_21            vace_14B                  video_guide (required), video_mask, image_refs
hunyuan            hunyuan                   —
ltxv               ltxv_13B                  image_start, image_end
flux               flux                      — (image)
qwen_image         qwen_image_20B            — (image)
qwen_image_edit    qwen_image_edit_20B       image_refs (required) (image)
z_image_turbo      z_image                   — (image)
=================  ========================  ===========================================================

Every type takes ``prompt`` (required), ``negative_prompt``, ``resolution`` ("WxH"), ``num_inference_steps``,
``guidance_scale``, ``flow_shift``, ``seed``, ``loras`` and ``model`` (another Wan2GP model of the same kind,
e.g. a finetune such as ``i2v_2_2_Enhanced_Lightning_v2``), plus ``timeout_s``. Video types add
``video_length`` (frames), ``guidance2_scale``, ``switch_threshold`` and ``sample_solver``; image types
``batch_size``; VACE types ``video_prompt_type`` (Wan2GP's letters; default ``V``, ``VA`` with a ``video_mask``:
without ``V`` Wan2GP ignores the control video), ``control_net_weight``, ``control_net_weight2``. A media
value is a URL, or an object with exactly one of ``url`` / ``storage_path`` / ``base64`` (and an optional
``filename``); ``image_refs`` is a list of those. ``loras`` is a list of ``{"url": …, "multiplier": 1.0}`` (or
``"name"``: a file already in Wan2GP's LoRA folder); a multiplier is a number or Wan2GP's phase syntax
(``"1.0;0.5"``, per-step values with commas).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfy_worker.errors import InputRejected
from comfy_worker.inputs import (
    Fetcher,
    display_url,
    fetch_source,
    filename_from_url,
    safe_filename,
)
from comfy_worker.storage import Storage

MAX_TEXT = 20_000
MAX_LORAS = 16
MAX_REFS = 8
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_RESOLUTION = re.compile(r"^(\d{2,5})x(\d{2,5})$")
_MULTIPLIER = re.compile(r"^-?\d+(\.\d+)?([,;]-?\d+(\.\d+)?)*$")


@dataclass(frozen=True)
class Spec:
    kind: str  # text | int | float | resolution | media | media_list | loras | name | choice
    required: bool = False
    lo: float | None = None
    hi: float | None = None
    media: str = ""  # image | video (for media kinds)
    choices: tuple[str, ...] = ()


COMMON: dict[str, Spec] = {
    "prompt": Spec("text", required=True),
    "negative_prompt": Spec("text"),
    "resolution": Spec("resolution"),
    "num_inference_steps": Spec("int", lo=1, hi=200),
    "guidance_scale": Spec("float", lo=0, hi=50),
    "flow_shift": Spec("float", lo=0, hi=100),
    "seed": Spec("int", lo=-1, hi=2**32 - 1),
    "loras": Spec("loras"),
    "model": Spec("name"),
    "timeout_s": Spec("float", lo=1, hi=7 * 24 * 3600),
}
VIDEO: dict[str, Spec] = {
    **COMMON,
    "video_length": Spec("int", lo=1, hi=2049),
    "guidance2_scale": Spec("float", lo=0, hi=50),
    "switch_threshold": Spec("int", lo=0, hi=1000),
    # the union of what Wan2GP's models declare (wan_handler: unipc, euler, dpm++, causvid, lcm); the child
    # checks the model's own list (worker_wgp.backend.check_settings)
    "sample_solver": Spec("choice", choices=("unipc", "euler", "dpm++", "causvid", "lcm")),
}
IMAGE: dict[str, Spec] = {**COMMON, "batch_size": Spec("int", lo=1, hi=16)}
I2V: dict[str, Spec] = {**VIDEO, "image_start": Spec("media", required=True, media="image"),
                        "image_end": Spec("media", media="image")}
LTXV: dict[str, Spec] = {**VIDEO, "image_start": Spec("media", media="image"),
                         "image_end": Spec("media", media="image")}
VACE: dict[str, Spec] = {
    **VIDEO,
    "video_guide": Spec("media", required=True, media="video"),
    "video_mask": Spec("media", media="video"),
    "image_refs": Spec("media_list", media="image"),
    "video_prompt_type": Spec("name"),
    "control_net_weight": Spec("float", lo=0, hi=10),
    "control_net_weight2": Spec("float", lo=0, hi=10),
}
EDIT: dict[str, Spec] = {**IMAGE, "image_refs": Spec("media_list", required=True, media="image")}


@dataclass(frozen=True)
class TaskType:
    model: str
    params: Mapping[str, Spec]
    output: str  # video | image


TASK_TYPES: dict[str, TaskType] = {
    "t2v": TaskType("t2v", VIDEO, "video"),
    "t2v_22": TaskType("t2v_2_2", VIDEO, "video"),
    "i2v": TaskType("i2v", I2V, "video"),
    "i2v_22": TaskType("i2v_2_2", I2V, "video"),
    "vace": TaskType("vace_14B_cocktail_2_2", VACE, "video"),
    "vace_22": TaskType("vace_14B_cocktail_2_2", VACE, "video"),
    "vace_21": TaskType("vace_14B", VACE, "video"),
    "hunyuan": TaskType("hunyuan", VIDEO, "video"),
    "ltxv": TaskType("ltxv_13B", LTXV, "video"),
    "flux": TaskType("flux", IMAGE, "image"),
    "qwen_image": TaskType("qwen_image_20B", IMAGE, "image"),
    "qwen_image_edit": TaskType("qwen_image_edit_20B", EDIT, "image"),
    "z_image_turbo": TaskType("z_image", IMAGE, "image"),
}


def model_for(task_type: str, params: Mapping[str, Any] | None = None) -> str:
    """The Wan2GP model a task of this type runs (``params.model`` overrides the type's default)."""
    override = (params or {}).get("model")
    return override if isinstance(override, str) and _NAME.match(override) else TASK_TYPES[task_type].model


@dataclass(frozen=True)
class MediaInput:
    key: str  # the settings key it fills
    index: int | None  # position in a list (image_refs), else None
    source: Mapping[str, str]  # exactly one of url / storage_path / base64, optional filename
    media: str


@dataclass(frozen=True)
class LoraSpec:
    multiplier: str
    url: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class WanJob:
    """A validated task: everything but the files still to fetch."""

    task_type: str
    model: str
    settings: dict[str, Any]
    media: tuple[MediaInput, ...] = ()
    loras: tuple[LoraSpec, ...] = ()
    timeout_s: float | None = None
    output: str = "video"


@dataclass(frozen=True)
class GenerationRequest:
    """What the engine runs: a Wan2GP model and its settings, every file a local absolute path."""

    model: str
    settings: dict[str, Any] = field(default_factory=dict)


def reject(key: str, problem: str, **details: Any) -> InputRejected:
    return InputRejected(f"params.{key} {problem}", details={"field": key, **details})


def parse_params(task_type: str, params: Mapping[str, Any]) -> WanJob:
    """Check ``params`` against the contract of ``task_type``; a WanJob, or InputRejected naming the key."""
    kind = TASK_TYPES.get(task_type)
    if kind is None:
        raise InputRejected(f"task type {task_type!r} is not a Wan2GP task type; known: {', '.join(TASK_TYPES)}",
                            details={"field": "task_type"})
    if not isinstance(params, Mapping):
        raise InputRejected(f"params must be a JSON object, got {type(params).__name__}", details={"field": "params"})
    accepted = sorted(kind.params)
    for key in params:
        if key not in kind.params:
            raise reject(key, f"is not a parameter of {task_type} tasks; accepted: {', '.join(accepted)}",
                         accepted=accepted)
    for key, spec in kind.params.items():
        if spec.required and (params.get(key) is None or params.get(key) == ""):
            raise reject(key, f"is required for {task_type} tasks")
    settings: dict[str, Any] = {}
    media: list[MediaInput] = []
    loras: tuple[LoraSpec, ...] = ()
    for key, value in params.items():
        spec = kind.params[key]
        if value is None:
            continue
        if spec.kind == "media":
            media.append(MediaInput(key, None, _media_source(key, value), spec.media))
        elif spec.kind == "media_list":
            if not isinstance(value, list) or not 1 <= len(value) <= MAX_REFS:
                raise reject(key, f"must be a list of 1 to {MAX_REFS} images (URLs or {{url | storage_path}} objects)")
            media += [MediaInput(key, i, _media_source(f"{key}[{i}]", v), spec.media) for i, v in enumerate(value)]
        elif spec.kind == "loras":
            loras = _loras(value)
        elif key not in ("model", "timeout_s"):
            settings[key] = _scalar(key, spec, value)
        else:
            _scalar(key, spec, value)
    if kind.params is VACE and "video_prompt_type" not in settings:
        # Wan2GP uses video_guide / video_mask / image_refs only when video_prompt_type says so ("V": the control
        # video in raw format, "A": a mask, "I": reference images); its default "" would drop them without a word
        letters = "V" + ("A" if params.get("video_mask") is not None else "")
        settings["video_prompt_type"] = letters + ("I" if params.get("image_refs") else "")
    timeout = params.get("timeout_s")
    return WanJob(task_type, model_for(task_type, params), settings, tuple(media), loras,
                  float(timeout) if timeout is not None else None, kind.output)


def _scalar(key: str, spec: Spec, value: Any) -> Any:
    if spec.kind == "text":
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise reject(key, f"must be a string of at most {MAX_TEXT} characters")
        return value
    if spec.kind in ("name", "choice"):
        if not isinstance(value, str) or not _NAME.match(value):
            raise reject(key, "must be a name of letters, digits, '_', '.' or '-'")
        if spec.choices and value not in spec.choices:
            raise reject(key, f"must be one of {', '.join(spec.choices)}, got {value!r}")
        return value
    if spec.kind == "resolution":
        match = _RESOLUTION.match(value) if isinstance(value, str) else None
        if match is None or not all(16 <= int(g) <= 4096 for g in match.groups()):
            raise reject(key, f"must be 'WIDTHxHEIGHT' with each side 16 to 4096 (e.g. '832x480'), got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise reject(key, f"must be a number, got {value!r}")
    if spec.kind == "int" and value != int(value):
        raise reject(key, f"must be a whole number, got {value!r}")
    if (spec.lo is not None and value < spec.lo) or (spec.hi is not None and value > spec.hi):
        raise reject(key, f"must be between {spec.lo:g} and {spec.hi:g}, got {value!r}")
    return int(value) if spec.kind == "int" else float(value)


def _media_source(key: str, value: Any) -> dict[str, str]:
    if isinstance(value, str):
        value = {"url": value}
    if not isinstance(value, dict):
        raise reject(key, "must be a URL or an object with one of url, storage_path, base64")
    unknown = sorted(set(value) - {"url", "storage_path", "base64", "filename"})
    if unknown:
        raise reject(key, f"has an unknown key {unknown[0]!r}; accepted: url, storage_path, base64, filename")
    sources = [k for k in ("url", "storage_path", "base64") if value.get(k)]
    if len(sources) != 1 or not all(isinstance(v, str) for v in value.values()):
        raise reject(key, "needs exactly one of url, storage_path or base64 (a string)")
    if sources == ["url"] and not value["url"].startswith(("http://", "https://")):
        raise reject(key, f"url must be http or https, got {value['url'][:60]!r}")
    return dict(value)


def _loras(value: Any) -> tuple[LoraSpec, ...]:
    if not isinstance(value, list) or len(value) > MAX_LORAS:
        raise reject("loras", f"must be a list of at most {MAX_LORAS} {{url | name, multiplier}} objects")
    out: list[LoraSpec] = []
    for i, item in enumerate(value):
        key = f"loras[{i}]"
        if not isinstance(item, dict):
            raise reject(key, "must be an object {url | name, multiplier}")
        unknown = sorted(set(item) - {"url", "name", "multiplier"})
        if unknown:
            raise reject(key, f"has an unknown key {unknown[0]!r}; accepted: url, name, multiplier")
        url, name = item.get("url"), item.get("name")
        if (url is None) == (name is None):
            raise reject(key, "needs exactly one of url (to download) or name (a file in Wan2GP's LoRA folder)")
        if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
            raise reject(f"{key}.url", "must be an http or https URL")
        if name is not None and (not isinstance(name, str) or not _NAME.match(name)):
            raise reject(f"{key}.name", "must be a file name in Wan2GP's LoRA folder (no path)")
        multiplier = item.get("multiplier", 1.0)
        if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float, str)):
            raise reject(f"{key}.multiplier", "must be a number or Wan2GP's phase syntax such as '1.0;0.5'")
        text = f"{multiplier:g}" if isinstance(multiplier, (int, float)) else multiplier.strip()
        if not _MULTIPLIER.match(text) or (isinstance(multiplier, float) and not math.isfinite(multiplier)):
            raise reject(f"{key}.multiplier", f"must be a number or Wan2GP's phase syntax such as '1.0;0.5', "
                         f"got {multiplier!r}")
        out.append(LoraSpec(text, url=url, name=name))
    return tuple(out)


# --- fetching --------------------------------------------------------------------------------------------

_LORA_LOCKS: dict[Path, asyncio.Lock] = {}


def lora_filename(url: str) -> str:
    """Where a LoRA URL lands in Wan2GP's folder: its name plus a hash of the URL (two URLs never share a
    file; the same URL is downloaded once), always ``.safetensors``."""
    stem = safe_filename(filename_from_url(url), "lora").removesuffix(".safetensors")
    return f"{stem[:80]}-{hashlib.sha256(url.encode()).hexdigest()[:12]}.safetensors"


async def fetch_lora(spec: LoraSpec, lora_dir: Path, fetch: Fetcher, max_bytes: int) -> Path:
    """A LoRA as a local file in ``lora_dir``: downloaded (cached by URL) or, by name, already there."""
    if spec.name is not None:
        path = lora_dir / spec.name
        if not path.is_file():
            raise reject("loras", f"names {spec.name!r}, which is not in Wan2GP's LoRA folder {lora_dir}")
        return path
    assert spec.url is not None
    path = lora_dir / lora_filename(spec.url)
    lock = _LORA_LOCKS.setdefault(path, asyncio.Lock())
    async with lock:  # two prefetched tasks with the same LoRA download it once
        if path.is_file():
            return path
        try:
            return await fetch(spec.url, lora_dir, filename=path.name, max_bytes=max_bytes)
        except InputRejected as exc:
            raise InputRejected(f"LoRA {display_url(spec.url)}: {exc} (WAN2GP_LORA_MAX_BYTES caps LoRA files)",
                                details={"field": "loras", **exc.details}) from exc


# Wan2GP tells images from videos by the file name only (shared/utils/utils.py: has_image_file_extension /
# has_video_file_extension): "start.bin" or a signed URL's extension-less name is refused ("Start Image should be
# an Image") or silently dropped, so every media file is given one of these suffixes from its first bytes.
WAN2GP_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".jfif", ".pjpeg")
WAN2GP_VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov")


def sniff_media(head: bytes) -> tuple[str, str] | None:
    """(media, suffix) from a file's first bytes, for the formats Wan2GP reads; None when none matches."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image", ".png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image", ".jpg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image", ".gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image", ".webp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image", ".tiff"
    if head[:2] == b"BM":
        return "image", ".bmp"
    if head[4:8] == b"ftyp":
        return "video", ".mov" if head[8:12] == b"qt  " else ".mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska, WebM (a Matroska subset)
        return "video", ".mkv"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video", ".avi"
    return None


def wan2gp_media_file(path: Path, item: MediaInput) -> Path:
    """``path`` under a name whose suffix Wan2GP recognises as the media the key takes (renamed when its suffix
    is not one); InputRejected naming the key when the bytes are no image (or video) Wan2GP reads."""
    suffixes = WAN2GP_IMAGE_SUFFIXES if item.media == "image" else WAN2GP_VIDEO_SUFFIXES
    if path.suffix.lower() in suffixes:
        return path
    with path.open("rb") as f:
        sniffed = sniff_media(f.read(16))
    key = item.key if item.index is None else f"{item.key}[{item.index}]"
    if sniffed is None or sniffed[0] != item.media:
        formats = "PNG, JPEG, WebP, GIF, BMP or TIFF" if item.media == "image" else "MP4, MOV, MKV/WebM or AVI"
        found = f"a {sniffed[0]}" if sniffed else "not a format Wan2GP reads"
        path.unlink(missing_ok=True)
        raise reject(key, f"must be {'an image' if item.media == 'image' else 'a video'} ({formats}); the file "
                     f"given ({path.name}) is {found}", media=item.media)
    return path.rename(path.with_name(path.stem + sniffed[1]))


async def fetch_media(item: MediaInput, dest: Path, fetch: Fetcher, storage: Storage, max_bytes: int) -> Path:
    name = f"{item.key}{'' if item.index is None else f'_{item.index}'}"
    path = await fetch_source(item.source, dest, fetch=fetch, storage=storage, max_bytes=max_bytes, stem=name)
    return wan2gp_media_file(path, item)


async def build_request(
    job: WanJob, *, fetch: Fetcher, storage: Storage, inputs_dir: Path, lora_dir: Path | None,
    input_max_bytes: int, lora_max_bytes: int,
) -> GenerationRequest:
    """Fetch the job's media and LoRAs; the request with local absolute paths in Wan2GP's settings keys."""
    settings = dict(job.settings)
    for item in job.media:
        path = str((await fetch_media(item, inputs_dir, fetch, storage, input_max_bytes)).resolve())
        if item.index is None:
            settings[item.key] = path
        else:
            settings.setdefault(item.key, []).append(path)
    if job.loras:
        if lora_dir is None:
            raise AssertionError("a job with LoRAs needs Wan2GP's LoRA folder")
        paths = [await fetch_lora(spec, lora_dir, fetch, lora_max_bytes) for spec in job.loras]
        settings["activated_loras"] = [str(p.resolve()) for p in paths]
        settings["loras_multipliers"] = " ".join(spec.multiplier for spec in job.loras)
    return GenerationRequest(job.model, settings)
