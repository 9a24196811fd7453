"""Bench-only stand-in for Wan2GP's ``wgp.py`` that holds and releases GPU memory the way Wan2GP does, for
``bench/gpu/bench_engines_gpu.py`` (real Wan2GP cannot be installed on the GPU machine: docs/engines.md says why).

It is driven exactly like Wan2GP, through ``shared/api.py`` (the benchmark copies the API stand-in from
tests/standins/wan2gp/shared/api.py next to this file) by the real :mod:`worker_wgp.child`, so everything between
the daemon and Wan2GP is the product's code. What it reproduces of Wan2GP's memory behaviour (mmgp, profile 1:
everything resident on the GPU):

* **load** (``load_models``): the model's weights are read into pinned host memory once per process (Wan2GP keeps
  them in RAM after the first load) and copied to the GPU in 256 MiB blocks, as mmgp moves a model block by
  block: ``HOLDER_MODEL_MB`` (default 2600, Wan 2.1 1.3B in bf16) for the transformer plus ``HOLDER_TEXT_MB``
  (default 6000, UMT5-XXL in int8) for the text encoder;
* **steps**: ``HOLDER_STEP_MATMULS`` bf16 matmuls of ``HOLDER_DIM`` squared (default 24 x 8192²) per denoising
  step on activations of ``HOLDER_ACT_MB`` (default 2048), so peak memory is weights plus activations;
* **release** (``release_model``, what the API's ``session.close()`` and the child's ``free`` call): the tensors
  dropped, ``gc.collect()``, ``torch.cuda.empty_cache()`` — as ``wgp.release_model`` does
  (``offloadobj.release()``, ``gc.collect()``, ``torch.cuda.empty_cache()``).

Each generation prints ``holder_stats {json}`` (load seconds, seconds per step, peak bytes) to stderr, which the
daemon logs as a ``wan2gp_output`` line. Outputs are small mp4 files written with ffmpeg.
"""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
import time
from typing import Any

WanGP_version = "holder-1"
transformer_type: str | None = None
wan_model: Any = None
reload_needed = True
offloadobj = None
server_config: dict[str, Any] = {}
save_path = image_save_path = audio_save_path = os.path.abspath("outputs")
BLOCK = 256 * 1024 * 1024
_HOST: dict[str, Any] = {}  # model name -> pinned host copy (Wan2GP keeps weights in RAM between loads)
MODELS = {"t2v", "t2v_1.3B", "t2v_2_2", "i2v", "i2v_2_2", "vace_14B", "vace_14B_cocktail_2_2", "hunyuan",
          "ltxv_13B", "flux", "qwen_image_20B", "qwen_image_edit_20B", "z_image"}


def _mb(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default))) * 1024 * 1024


def _device() -> str:
    return os.environ.get("HOLDER_DEVICE", "cuda")


class _Model:
    def __init__(self, blocks: list[Any]) -> None:
        self.blocks = blocks
        self._interrupt = False


def get_model_def(model_type: str) -> dict[str, Any] | None:
    return {"name": f"holder {model_type}", "architecture": model_type} if model_type in MODELS else None


def get_model_min_frames_and_step(model_type: str) -> tuple[int, int, int]:
    """Upstream's frames rule for Wan models (frames_minimum 5, frames_steps = latent_size 4): what
    worker_wgp.backend.check_settings reads."""
    return 5, 4, 4


def get_lora_dir(model_type: str) -> str:
    path = os.path.join("loras", model_type.split("_", 1)[0])
    os.makedirs(path, exist_ok=True)
    return path


def load_models(model_type: str, *_: Any, **__: Any) -> tuple[_Model, object]:
    import torch

    host = _HOST.get(model_type)
    if host is None:
        total = _mb("HOLDER_MODEL_MB", 2600) + _mb("HOLDER_TEXT_MB", 6000)
        host = [torch.empty(min(BLOCK, total - i), dtype=torch.uint8) for i in range(0, total, BLOCK)]
        if _device() == "cuda":
            host = [b.pin_memory() for b in host]
        for block in host:
            block.fill_(1)
        _HOST[model_type] = host
    blocks = [b.to(_device(), non_blocking=True) for b in host]
    if _device() == "cuda":
        torch.cuda.synchronize()
    return _Model(blocks), object()


def release_model() -> None:
    global wan_model, offloadobj, reload_needed
    wan_model = None
    offloadobj = None
    reload_needed = True
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def validate_task(task: dict[str, Any], state: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    settings = dict(task["params"])
    if get_model_def(settings.get("model_type", "")) is None:
        return None, f"Unknown model type {settings.get('model_type')!r}"
    if not re.fullmatch(r"\d+x\d+", str(settings.get("resolution", "832x480"))):
        return None, f"Invalid resolution {settings.get('resolution')!r}"
    return settings, ""


def generate_media(
    task: dict[str, Any], send_cmd: Any, prompt: str = "", resolution: str = "832x480", video_length: int = 81,
    seed: int = -1, num_inference_steps: int = 30, state: dict[str, Any] | None = None, model_type: str = "",
    plugin_data: Any = None,
) -> bool:
    import torch

    global wan_model, transformer_type, reload_needed
    assert state is not None
    gen = state["gen"]
    load_s = 0.0
    if model_type != transformer_type or reload_needed or wan_model is None:
        release_model()
        send_cmd("status", f"Loading model {model_type}...")
        send_cmd("progress", [0, "Loading model"])
        t0 = time.monotonic()
        wan_model, _ = load_models(model_type)
        load_s = time.monotonic() - t0
        transformer_type = model_type
        reload_needed = False
        send_cmd("status", "Model loaded")
    dim = int(os.environ.get("HOLDER_DIM", "8192"))
    act = torch.empty(_mb("HOLDER_ACT_MB", 2048) // 2, dtype=torch.bfloat16, device=_device())
    a = act[: dim * dim].view(dim, dim).normal_()
    steps: list[float] = []
    for step in range(1, num_inference_steps + 1):
        if gen.get("abort") or wan_model._interrupt:
            wan_model._interrupt = False
            return False
        t0 = time.monotonic()
        for _ in range(int(os.environ.get("HOLDER_STEP_MATMULS", "24"))):
            a = torch.tanh(a @ a.T * (1.0 / dim))
        if _device() == "cuda":
            torch.cuda.synchronize()
        steps.append(time.monotonic() - t0)
        send_cmd("progress", [(step, num_inference_steps), f"Denoising | step {step}", num_inference_steps])
    del a, act
    peak = torch.cuda.max_memory_allocated() if _device() == "cuda" else None
    stats = {"model": model_type, "load_s": round(load_s, 3), "steps": len(steps),
             "s_per_step": round(sum(steps[1:]) / max(1, len(steps) - 1), 4), "peak_bytes": peak}
    print("holder_stats " + json.dumps(stats), file=sys.stderr, flush=True)
    send_cmd("progress", [(num_inference_steps, num_inference_steps), "VAE Decoding", num_inference_steps])
    os.makedirs(save_path, exist_ok=True)
    width, height = resolution.split("x")
    path = os.path.join(save_path, f"holder_{time.time_ns()}_seed{seed}.mp4")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={width}x{height}:rate=16",
                    "-frames:v", str(video_length), "-pix_fmt", "yuv420p", path], check=True)
    gen["file_list"].append(path)
    send_cmd("output")
    return True
