"""Test-only stand-in for Wan2GP's ``wgp.py`` (github.com/deepbeepmeep/Wan2GP), as its Python API drives it.

Wan2GP cannot run here (no GPU, no weights). This directory is a fake Wan2GP checkout: ``wgp.py`` (this module)
and ``shared/api.py`` (the documented API, docs/API.md upstream). The real :mod:`worker_wgp.child` imports it
exactly as it imports Wan2GP, so tests exercise the child, the protocol and the engine; only Wan2GP is fake.

What it reproduces (names and behaviour read from upstream wgp.py / shared/api.py):

* module state ``transformer_type`` / ``wan_model`` / ``reload_needed``; ``load_models`` when the requested
  ``model_type`` differs from the loaded one, announced with ``send_cmd("status", "Loading model …")`` and
  ``"Model loaded"`` only (upstream sends no progress while it loads); ``release_model()`` drops the model
  (the API's ``session.close()`` calls it);
* ``get_model_def`` (``None`` for an unknown type; upstream's ``validate_task`` then fails with an
  AttributeError in its settings merge, which the API reports as a ``runtime`` error, not a validation one),
  ``get_model_min_frames_and_step``, and ``generate_media`` rounding the resolution down to the model's
  ``vae_block_size`` (16 by default) and ``video_length`` down to ``latent_size``·n + ``frames_offset`` (at
  least ``frames_minimum``: 4n+1 from 5 for Wan) without saying so, as upstream does;
* ``video_guide`` / ``video_mask`` dropped without a word unless ``video_prompt_type`` has ``V`` (and ``A``
  without ``U`` for the mask), and ``image_refs`` unless it has ``I``, as upstream's ``validate_settings`` does;
  those used are printed ("Control video: …", "Reference images: …");
* a ``sample_solver`` the Wan model does not declare raising NotImplementedError after the load, as
  upstream's any2video does (models without ``sample_solvers`` ignore it);
* attachments recognised by their file extension only (upstream's ``has_image_file_extension``): an
  ``image_start`` path without an image extension is refused with "Start Image should be an Image";
* progress as upstream sends it: ``[0, "… | Encoding Prompt"]`` before denoising, then
  ``[(step, total), "… | Denoising | …", total]`` from step 0 (the callback before the first step) and
  ``"VAE Decoding"`` at step ``total`` (the callback after the last step);
* a loaded model holds real memory (``WGP_STANDIN_MODEL_MB``, default 32 MiB of written pages, so the child's
  RSS shows it) until ``release_model()``; loading takes ``WGP_STANDIN_LOAD_S`` seconds (default 0.05);
* ``generate_media(task, send_cmd, …)`` with upstream's parameter names, reporting steps as
  ``send_cmd("progress", [(step, total), status, total])``, honouring ``state["gen"]["abort"]`` (the API's
  cancel), writing a real file with ffmpeg (mp4 of ``video_length`` frames at ``resolution``; png for image
  models) into ``save_path`` and appending it to ``state["gen"]["file_list"]``;
* ``validate_task`` (the API's validation stage): unknown model, malformed resolution, missing LoRA files;
* a CUDA OOM during denoising reported the way upstream reports it: ``send_cmd("error", "… unsufficient VRAM …")``
  and ``return False``; ``get_lora_dir(model_type)`` creating ``<--loras root>/<family>``.

Failure modes are asked for in the prompt, so they travel through every layer (task params included):
``[standin:step_s=0.2]`` seconds per step (default ``WGP_STANDIN_STEP_S`` or 0.01), ``[standin:crash_at=2]``
kills the process at step 2, ``[standin:crash_once=2]`` does so only the first time for that prompt (a marker
in the output directory), ``[standin:oom]``, ``[standin:oom_on_load]`` (an ``OutOfMemoryError`` raised by the
loader), ``[standin:raise]`` (a RuntimeError), ``[standin:download_error]`` (a ConnectionError while loading),
``[standin:invalid]`` (a validation error).

With ``WGP_STANDIN_CUDA=1`` it also stands in for torch's CUDA memory counters (a ``torch`` module with just
``torch.cuda.is_available / mem_get_info / memory_allocated / memory_reserved / max_memory_allocated /
reset_peak_memory_stats``, the only calls the child makes), reporting the loaded model's bytes as reserved GPU
memory on a ``WGP_STANDIN_GPU_MB`` (default 1024) card: what the daemon's VRAM hand-over reads from Wan2GP.

Simplified: no model weights, no real denoising; settings outside the signature are dropped as upstream's API
drops them; every model is a video model unless listed in ``IMAGE_MODELS``.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from typing import Any

WanGP_version = "standin-1"
transformer_type: str | None = None
wan_model: Any = None
reload_needed = True
offloadobj = None
server_config: dict[str, Any] = {}
save_path = image_save_path = audio_save_path = os.path.abspath("outputs")
settings_version = 2.5
ATTACHMENT_KEYS = ("image_start", "image_end", "image_refs", "video_guide", "video_mask", "video_source")

# model types of upstream's defaults/*.json that the task types use (and one finetune)
VIDEO_MODELS = {
    "t2v", "t2v_2_2", "i2v", "i2v_2_2", "i2v_2_2_Enhanced_Lightning_v2", "vace_14B", "vace_14B_cocktail_2_2",
    "hunyuan", "ltxv_13B",
}
IMAGE_MODELS = {"flux", "qwen_image_20B", "qwen_image_edit_20B", "z_image"}
_DIRECTIVE = re.compile(r"\[standin:([a-z_]+)(?:=([^\]]*))?\]")


class OutOfMemoryError(RuntimeError):
    """Named like torch.OutOfMemoryError (torch is not installed here)."""


class _Model:
    def __init__(self, model_type: str, megabytes: int) -> None:
        self.model_type = model_type
        self.weights = b"\x01" * (megabytes * 1024 * 1024)  # written pages: resident, visible in RSS
        self._interrupt = False


class _FakeCuda:
    """torch.cuda's memory counters over the stand-in's loaded model (see the module docstring)."""

    def __init__(self) -> None:
        self.total = int(os.environ.get("WGP_STANDIN_GPU_MB", "1024")) * 1024 * 1024
        self.peak = 0

    def _held(self) -> int:
        return len(wan_model.weights) if wan_model is not None else 0

    def is_available(self) -> bool:
        return True

    def mem_get_info(self) -> tuple[int, int]:
        return self.total - self._held(), self.total

    def memory_allocated(self) -> int:
        self.peak = max(self.peak, self._held())
        return self._held()

    def memory_reserved(self) -> int:
        return self._held()

    def max_memory_allocated(self) -> int:
        return max(self.peak, self._held())

    def reset_peak_memory_stats(self) -> None:
        self.peak = self._held()


if os.environ.get("WGP_STANDIN_CUDA") == "1" and "torch" not in sys.modules:
    import types

    _torch = types.ModuleType("torch")
    _torch.cuda = _FakeCuda()  # type: ignore[attr-defined]
    sys.modules["torch"] = _torch


def directives(prompt: str) -> dict[str, str]:
    return {m.group(1): m.group(2) or "" for m in _DIRECTIVE.finditer(prompt or "")}


# what upstream's family handlers add to these model definitions (frames and VAE block; defaults 5 / 4 / 16)
_MODEL_EXTRAS: dict[str, dict[str, Any]] = {
    "ltxv_13B": {"frames_minimum": 17, "frames_steps": 8, "vae_block_size": 32},
    "hunyuan": {"frames_minimum": 5, "frames_steps": 4},
}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".jfif", ".pjpeg")


WAN_SOLVERS = [("unipc", "unipc"), ("euler", "euler"), ("dpm++", "dpm++"), ("flowmatch causvid", "causvid"),
               ("lcm + ltx", "lcm")]  # models/wan/wan_handler.py upstream


def get_model_def(model_type: str) -> dict[str, Any] | None:
    if model_type in VIDEO_MODELS or model_type in IMAGE_MODELS:
        wan = model_type.startswith(("t2v", "i2v", "vace"))
        return {"name": f"standin {model_type}", "architecture": model_type,
                "image_outputs": model_type in IMAGE_MODELS, **({"sample_solvers": WAN_SOLVERS} if wan else {}),
                **_MODEL_EXTRAS.get(model_type, {})}
    return None


def get_model_min_frames_and_step(model_type: str) -> tuple[int, int, int]:
    model_def = get_model_def(model_type)
    assert model_def is not None
    frames_minimum = model_def.get("frames_minimum", 5)
    frames_steps = model_def.get("frames_steps", 4)
    return frames_minimum, frames_steps, model_def.get("latent_size", frames_steps)


def _floor_frame_count(count: int, minimum: int, step: int, offset: int = 1) -> int:
    count = max(minimum, count)
    lower = (count - offset) // step * step + offset
    return lower if lower >= minimum else minimum


def _lora_root() -> str:
    """``--loras <root>`` on the command line (upstream: shared/cli_args.py), else ``loras``."""
    argv = sys.argv[1:]
    return argv[argv.index("--loras") + 1] if "--loras" in argv[:-1] else "loras"


LORA_ROOT = _lora_root()


def get_lora_dir(model_type: str) -> str:
    if get_model_def(model_type) is None:
        raise Exception("loras unknown")
    family = model_type.split("_", 1)[0]
    path = os.path.join(LORA_ROOT, family)
    os.makedirs(path, exist_ok=True)
    return path


def load_models(model_type: str, *_: Any, prompt: str = "", **__: Any) -> tuple[_Model, object]:
    d = directives(prompt)
    if "oom_on_load" in d:
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    if "download_error" in d:
        raise ConnectionError("standin: HTTPSConnectionPool(host='huggingface.co'): Max retries exceeded")
    time.sleep(float(os.environ.get("WGP_STANDIN_LOAD_S", "0.05")))
    return _Model(model_type, int(os.environ.get("WGP_STANDIN_MODEL_MB", "32"))), object()


def release_model() -> None:
    global wan_model, offloadobj, reload_needed
    wan_model = None
    offloadobj = None
    reload_needed = True


def validate_task(task: dict[str, Any], state: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    settings = dict(task["params"])
    model_type = settings.get("model_type", "")
    if not model_type:
        return None, "No model_type specified"
    model_def = get_model_def(model_type)
    settings = {**model_def.get("settings", {}), **settings}  # upstream: AttributeError for an unknown type
    image_start = settings.get("image_start")
    if isinstance(image_start, str) and not image_start.lower().endswith(IMAGE_EXTENSIONS):
        return None, "Start Image should be an Image"
    letters = settings.get("video_prompt_type") or ""
    if "V" not in letters:  # upstream's validate_settings: no control video (nor mask) without "V"
        settings["video_guide"] = settings["video_mask"] = None
    elif "A" not in letters or "U" in letters:
        settings["video_mask"] = None
    if "I" not in letters:  # upstream's validate_settings: no reference images without "I"
        settings["image_refs"] = None
    elif not settings.get("image_refs"):
        return None, "You must provide at least one Reference Image"
    if not re.fullmatch(r"\d+x\d+", str(settings.get("resolution", "832x480"))):
        return None, f"Invalid resolution {settings.get('resolution')!r}"
    missing = [lora for lora in settings.get("activated_loras") or [] if not os.path.isfile(lora)]
    if missing:
        return None, f"The following Loras files are missing or invalid: {missing}."
    if "invalid" in directives(settings.get("prompt", "")):
        return None, "standin: settings refused"
    return settings, ""


def _is_edit_task_params(settings: dict[str, Any]) -> bool:
    return str(settings.get("mode", "")).startswith("edit_")


def generate_media(
    task: dict[str, Any],
    send_cmd: Any,
    client_id: str = "",
    image_mode: int = 0,
    prompt: str = "",
    negative_prompt: str = "",
    resolution: str = "832x480",
    video_length: int = 81,
    batch_size: int = 1,
    seed: int = -1,
    num_inference_steps: int = 30,
    guidance_scale: float = 5.0,
    guidance2_scale: float = 5.0,
    switch_threshold: int = 0,
    flow_shift: float = 5.0,
    sample_solver: str = "unipc",
    activated_loras: list[str] | None = None,
    loras_multipliers: str = "",
    image_start: Any = None,
    image_end: Any = None,
    image_refs: Any = None,
    video_guide: Any = None,
    video_mask: Any = None,
    video_prompt_type: str = "",
    image_prompt_type: str = "",
    control_net_weight: float = 1.0,
    control_net_weight2: float = 1.0,
    denoising_strength: float = 1.0,
    state: dict[str, Any] | None = None,
    model_type: str = "",
    mode: str = "generate",
    plugin_data: Any = None,
) -> bool:
    global wan_model, transformer_type, reload_needed
    assert state is not None
    gen = state["gen"]
    d = directives(prompt)
    if model_type != transformer_type or reload_needed or wan_model is None:
        release_model()
        send_cmd("status", f"Loading model {model_type}...")
        wan_model, _ = load_models(model_type, prompt=prompt)
        transformer_type = model_type
        reload_needed = False
        send_cmd("status", "Model loaded")
    if video_guide is not None:
        print(f"Control video: {os.path.basename(video_guide)} mask: {video_mask and os.path.basename(video_mask)}")
    if image_refs:
        print(f"Reference images: {[os.path.basename(str(r)) for r in image_refs]}")
    if activated_loras:
        print(f"Loras: {[os.path.basename(lora) for lora in activated_loras]} multipliers: {loras_multipliers!r}")
    if "raise" in d:
        raise RuntimeError("standin: a node raised during denoising")
    model_def = get_model_def(model_type) or {}
    block = model_def.get("vae_block_size", 16)
    width, height = (int(side) // block * block for side in resolution.split("x"))
    resolution = f"{width}x{height}"
    if not model_def.get("image_outputs"):
        minimum, _, latent_size = get_model_min_frames_and_step(model_type)
        video_length = _floor_frame_count(video_length, minimum, latent_size, model_def.get("frames_offset", 1))
    solvers = [value for _, value in model_def.get("sample_solvers", [])]
    if solvers and sample_solver not in ("", *solvers):
        raise NotImplementedError(f"Unsupported Scheduler {sample_solver}")  # upstream: after the load
    send_cmd("progress", [0, "Prompt 1/1 | Encoding Prompt"])
    send_cmd("progress", [(0, num_inference_steps), "Prompt 1/1 | Denoising | 0.0s", num_inference_steps])
    step_s = float(d.get("step_s") or os.environ.get("WGP_STANDIN_STEP_S", "0.01"))
    for step in range(1, num_inference_steps + 1):
        time.sleep(step_s)
        if gen.get("abort") or wan_model._interrupt:
            wan_model._interrupt = False
            return False
        crash = d.get("crash_at") or d.get("crash_once")
        if crash and step == int(crash) and _should_crash(prompt, "crash_once" in d):
            os._exit(139)  # a segfault-like death: no cleanup, no reply
        if "oom" in d and step == 1:
            send_cmd("error", "The generation of the video has encountered an error: it is likely that you have "
                     "unsufficient VRAM and you should therefore reduce the video resolution or its number of frames.")
            return False
        phase = "VAE Decoding" if step == num_inference_steps else "Denoising"
        send_cmd("progress", [(step, num_inference_steps), f"Prompt 1/1 | {phase} | 0.{step}s",
                              num_inference_steps])
    path = _write_output(model_type, resolution, video_length, seed, prompt)
    print(f"New video saved to Path: {path}")
    gen["file_list"].append(path)
    send_cmd("output")
    return True


def _should_crash(prompt: str, once: bool) -> bool:
    if not once:
        return True
    marker = os.path.join(save_path, f".standin-crashed-{hashlib.sha256(prompt.encode()).hexdigest()[:16]}")
    if os.path.exists(marker):
        return False
    with open(marker, "w") as f:
        f.write("crashed once\n")
    return True


def _file_stem(prompt: str, seed: int) -> str:
    """Named as the real wgp.py (8681e9f) names a generation without ``output_filename``: the time to the second,
    the seed and the prompt truncated to 100 bytes, only ``/\\*:|?<>"`` and line breaks taken out (spaces, quotes
    and any script stay), e.g. ``2026-12-07-13h03m22s_seed1_a red fox runs through the snow``."""
    text = prompt.encode()[:100].decode(errors="ignore")
    for ch in '/\\*:|?<>"\n\r':
        text = text.replace(ch, "")
    return f"{time.strftime('%Y-%m-%d-%Hh%Mm%Ss')}_seed{seed}_{text.strip()}"


def _write_output(model_type: str, resolution: str, video_length: int, seed: int, prompt: str) -> str:
    os.makedirs(save_path, exist_ok=True)
    width, height = resolution.split("x")
    stem = _file_stem(prompt, seed)
    if model_type in IMAGE_MODELS:
        path = os.path.join(image_save_path, f"{stem}.png")
        args = ["-f", "lavfi", "-i", f"testsrc=size={width}x{height}:rate=1", "-frames:v", "1"]
    else:
        path = os.path.join(save_path, f"{stem}.mp4")
        args = ["-f", "lavfi", "-i", f"testsrc=size={width}x{height}:rate=16", "-frames:v", str(video_length),
                "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args, path], check=True)
    return path
