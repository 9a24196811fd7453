"""The Wan2GP side of the child: :class:`WanApiBackend` is the only code that touches Wan2GP, through its
documented Python API (``shared/api.py``; docs/API.md in the Wan2GP repository). The rest (:class:`Backend`,
measuring memory, classifying exceptions) is what :mod:`worker_wgp.child` needs from any backend.

Stdlib only at import time (Wan2GP is imported when a WanApiBackend is built): it runs inside Wan2GP's
environment, where comfy_worker is not installed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from worker_wgp import protocol as p


class GenerationFailure(Exception):
    """A generation that did not produce files, with its protocol error kind."""

    def __init__(self, kind: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.details = details or {}


@dataclass
class Outcome:
    files: list[str]
    switched: bool
    load_s: float


ProgressFn = Callable[[p.Progress], None]


class Backend(Protocol):
    version: str | None

    def loaded_model(self) -> str | None: ...

    def generate(
        self, request_id: str, model: str, settings: dict[str, Any], on_progress: ProgressFn,
        cancel: threading.Event,
    ) -> Outcome: ...

    def free(self) -> str | None: ...

    def lora_dir(self, model: str) -> str: ...

    def memory(self) -> p.Memory: ...


# --- measuring ---------------------------------------------------------------------------------------------


def rss_bytes() -> int | None:
    """Resident memory of this process (Linux /proc), None elsewhere."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def gpu_memory() -> dict[str, int | None]:
    """torch's view of GPU 0 when torch is already imported (by Wan2GP) and sees a GPU; empty otherwise."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    try:
        if not torch.cuda.is_available():
            return {}
        free, total = torch.cuda.mem_get_info()
        return {
            "gpu_allocated_bytes": int(torch.cuda.memory_allocated()),
            "gpu_reserved_bytes": int(torch.cuda.memory_reserved()),
            "gpu_peak_bytes": int(torch.cuda.max_memory_allocated()),
            "gpu_free_bytes": int(free),
            "gpu_total_bytes": int(total),
        }
    except Exception:  # a broken driver must not break a status report
        return {}


def measure() -> p.Memory:
    return p.Memory(rss_bytes=rss_bytes(), **gpu_memory())


def reset_peak() -> None:
    torch = sys.modules.get("torch")
    with contextlib.suppress(Exception):
        if torch is not None and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()


def api_phase(phase: str) -> str:
    """Wan2GP API phase (loading_model, inference_stage_2, downloading_output, …) → protocol phase."""
    if phase.startswith("inference"):
        return "inference"
    if phase == "downloading_output":
        return "saving"
    return phase if phase in p.PHASES else "other"


def classify(exc: BaseException) -> str:
    """Protocol error kind for an exception raised by Wan2GP (by type, never by message)."""
    names = {c.__name__ for c in type(exc).__mro__}
    if "OutOfMemoryError" in names or isinstance(exc, MemoryError):
        return "oom"
    if isinstance(exc, OSError):  # ConnectionError, TimeoutError, requests/huggingface_hub errors, disk full
        return "unavailable"
    return "failed"


def floor_frame_count(count: int, minimum: int, step: int, offset: int) -> int:
    """The frame count Wan2GP's generate_media makes of ``count`` (shared/utils/frame_scheduler.py upstream):
    at least ``minimum``, then rounded down to ``step``·n + ``offset``."""
    count = max(minimum, count)
    step, offset = max(1, step), max(0, offset)
    if step <= 1:
        return count
    lower = (count - offset) // step * step + offset
    if lower >= minimum:
        return lower
    return minimum if (minimum - offset) % step == 0 else ((minimum - offset) // step + 1) * step + offset


def check_settings(wgp: Any, model: str, settings: dict[str, Any]) -> None:
    """Refuse what Wan2GP would not run as asked, naming the key and the values it accepts (GenerationFailure
    ``invalid``). Upstream never refuses these: an unknown ``model_type`` fails deep inside its settings merge
    with an AttributeError, a ``sample_solver`` the model does not declare raises NotImplementedError once the
    model is loaded (Wan) or is ignored (models without solvers), a ``video_guide`` / ``video_mask`` without the
    ``video_prompt_type`` letter that enables it is dropped (so are ``image_refs`` without ``I``), and
    ``generate_media`` silently rounds the
    resolution down to the model's VAE block (16 by default) and the frame count down to its latent step
    (``4n+1`` for Wan), so a task would get another size or length than it asked for."""
    model_def = wgp.get_model_def(model)
    if model_def is None:
        raise GenerationFailure("invalid", f"params.model: {model!r} is not a model of this Wan2GP checkout (no "
                                "defaults/ or finetunes/ definition): use a model type Wan2GP lists",
                                {"field": "model"})
    block = int(model_def.get("vae_block_size", 16) or 16)
    resolution = settings.get("resolution")
    if isinstance(resolution, str) and resolution.count("x") == 1:
        width, height = (int(side) for side in resolution.split("x"))
        if width % block or height % block:
            down = f"{max(block, width // block * block)}x{max(block, height // block * block)}"
            up = f"{-(-width // block) * block}x{-(-height // block) * block}"
            raise GenerationFailure(
                "invalid", f"params.resolution must have both sides multiples of {block} for {model}, got "
                f"{resolution!r} (Wan2GP would render {down}): use {down} or {up}",
                {"field": "resolution", "multiple_of": block})
    solver = settings.get("sample_solver")
    if solver:
        declared = model_def.get("sample_solvers") or []
        choices = [str(c[1] if isinstance(c, (list, tuple)) else c) for c in declared]
        if solver not in choices:  # upstream: NotImplementedError after the model loaded, or silently ignored
            accepted = f"one of {', '.join(choices)}" if choices else "left out: it has no choice of solver"
            raise GenerationFailure("invalid", f"params.sample_solver must be {accepted} for {model}, got {solver!r}",
                                    {"field": "sample_solver", "accepted": choices})
    letters = str(settings.get("video_prompt_type") or "")
    if settings.get("video_guide") and "V" not in letters:  # upstream's validate_settings drops it silently
        raise GenerationFailure("invalid", f"params.video_prompt_type must contain V when video_guide is given, got "
                                f"{letters!r} (Wan2GP would ignore the control video): e.g. 'V' (VACE raw format), "
                                "'PV' (poses), 'DV' (depth)", {"field": "video_prompt_type"})
    if settings.get("video_mask") and ("A" not in letters or "U" in letters):
        raise GenerationFailure("invalid", f"params.video_prompt_type must contain A (and not U) when video_mask is "
                                f"given, got {letters!r} (Wan2GP would ignore the mask): e.g. 'VA'",
                                {"field": "video_prompt_type"})
    if settings.get("image_refs") and "video_prompt_type" in settings and "I" not in letters:
        raise GenerationFailure("invalid", f"params.video_prompt_type must contain I when image_refs are given, got "
                                f"{letters!r} (Wan2GP would ignore the reference images): e.g. 'VI'",
                                {"field": "video_prompt_type"})
    length = settings.get("video_length")
    if isinstance(length, int) and not model_def.get("image_outputs", False):
        minimum, _, step = wgp.get_model_min_frames_and_step(model)
        offset = int(model_def.get("frames_offset", 1))
        made = floor_frame_count(length, int(minimum), int(step), offset)
        if made != length:
            options = sorted({made, made + int(step)} if length > made else {made})
            raise GenerationFailure(
                "invalid", f"params.video_length must be {step}n+{offset} frames and at least {minimum} for "
                f"{model}, got {length} (Wan2GP would render {made}): use {' or '.join(map(str, options))}",
                {"field": "video_length", "minimum": minimum, "step": step, "offset": offset})


# Wan2GP's generate_media catches a CUDA OOM itself and reports only a message; these are its words
# (wgp.py: "it is likely that you have unsufficient VRAM" / "... unsufficient RAM"), plus torch's own.
_OOM_WORDS = ("unsufficient vram", "unsufficient ram", "insufficient vram", "cuda out of memory", "out of memory")


# --- the Wan2GP adapter (the only code that touches Wan2GP) ---------------------------------------------------


class WanApiBackend:
    """Wan2GP through its documented Python API (``shared/api.py``; docs/API.md in the Wan2GP repository)."""

    def __init__(self, root: Path, output_dir: Path, cli_args: list[str]) -> None:
        root = root.resolve()
        if not (root / "wgp.py").is_file() or not (root / "shared" / "api.py").is_file():
            raise RuntimeError(f"{root} holds no Wan2GP with shared/api.py")
        os.chdir(root)  # Wan2GP resolves defaults/, finetunes/, loras/ … against the working directory
        sys.path.insert(0, str(root))
        from shared import api  # type: ignore[import-not-found]

        output_dir.mkdir(parents=True, exist_ok=True)
        self._api = api
        self.session = api.init(
            root=root, output_dir=output_dir, cli_args=cli_args, console_output=True, console_isatty=False
        )
        import wgp  # type: ignore[import-not-found]  # the module init() imported

        self.wgp = wgp
        self.version = str(getattr(wgp, "WanGP_version", "") or "") or None
        self._last_exc: BaseException | None = None
        self._wrap_generate_media()

    def _wrap_generate_media(self) -> None:
        """Keep the exception object an uncaught failure carried (the API keeps only its text), so it can be
        classified by type. functools.wraps keeps the signature the API reads with inspect.signature."""
        import functools

        original = self.wgp.generate_media

        @functools.wraps(original)
        def generate_media(*args: Any, **kwargs: Any) -> Any:
            try:
                return original(*args, **kwargs)
            except BaseException as exc:
                self._last_exc = exc
                raise

        self.wgp.generate_media = generate_media

    def loaded_model(self) -> str | None:
        if getattr(self.wgp, "wan_model", None) is None:
            return None
        return getattr(self.wgp, "transformer_type", None)

    def generate(
        self, request_id: str, model: str, settings: dict[str, Any], on_progress: ProgressFn,
        cancel: threading.Event,
    ) -> Outcome:
        check_settings(self.wgp, model, settings)
        switched = self.loaded_model() != model
        self._last_exc = None
        reset_peak()
        t0 = time.monotonic()
        load_s = 0.0
        job = self.session.submit_task({**settings, "model_type": model})
        cancel_sent = False
        for event in job.events.iter(timeout=0.2):
            if cancel.is_set() and not cancel_sent:
                job.cancel()
                cancel_sent = True
            if event is None:
                continue
            if event.kind == "status":
                text = str(event.data)
                if text.lower().startswith("loading model"):  # upstream reports the load as a status only
                    on_progress(p.Progress(request_id, "loading_model", None, None, None, text))
                elif "model loaded" in text.lower():
                    load_s = time.monotonic() - t0
            elif event.kind == "progress":
                u = event.data
                phase = api_phase(str(u.phase))
                if phase != "loading_model" and switched and not load_s:
                    load_s = time.monotonic() - t0
                on_progress(p.Progress(request_id, phase, u.current_step, u.total_steps, float(u.progress), u.status))
        if cancel.is_set() and not cancel_sent:
            job.cancel()
        result = job.result()
        if result.success and result.generated_files:
            return Outcome([str(Path(f).resolve()) for f in result.generated_files], switched, load_s)
        raise self._failure(result, cancel.is_set())

    def _failure(self, result: Any, cancelled: bool) -> GenerationFailure:
        errors = list(result.errors)
        messages = "; ".join(str(e.message) for e in errors) or "Wan2GP produced no file"
        stages = {str(getattr(e, "stage", "") or "") for e in errors}
        details = {"errors": [{"message": str(e.message), "stage": getattr(e, "stage", None)} for e in errors]}
        if cancelled or "cancelled" in stages:
            return GenerationFailure("cancelled", "generation cancelled", details)
        if "validation" in stages:
            return GenerationFailure("invalid", f"Wan2GP refused the settings: {messages}", details)
        if self._last_exc is not None:
            kind = classify(self._last_exc)
            details["exception"] = type(self._last_exc).__name__
        elif any(word in messages.lower() for word in _OOM_WORDS):
            kind = "oom"
        else:
            kind = "failed"
        if kind == "oom":
            self.free()  # the retry (here or on another worker) starts from clean memory
        return GenerationFailure(kind, messages, details)

    def free(self) -> str | None:
        model = self.loaded_model()
        self.session.close()  # wgp.release_model(): drop the model, offload hooks, caches; empty the CUDA cache
        return model

    def lora_dir(self, model: str) -> str:
        return os.path.abspath(self.wgp.get_lora_dir(model))

    def memory(self) -> p.Memory:
        return measure()
