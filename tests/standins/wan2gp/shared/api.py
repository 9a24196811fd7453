"""Test-only stand-in for Wan2GP's documented Python API, ``shared/api.py`` (docs/API.md upstream).

See ``../wgp.py`` for what the fake Wan2GP reproduces. This module keeps the API's surface and its run loop:
``init(root=…, output_dir=…, cli_args=…)`` imports ``wgp`` from ``root`` (cwd = root, ``sys.argv`` = the cli args)
and points its save paths at ``output_dir``; ``session.submit_task(settings)`` validates the task
(``wgp.validate_task``: failures are errors of stage ``validation``, an exception one of stage ``runtime``), runs
``wgp.generate_media`` with the settings its signature accepts in a thread, and turns ``send_cmd`` into
``job.events``: ``progress`` (:class:`ProgressUpdate` with a normalised phase), ``status``, ``output``, ``error``
(stage ``generation``) and ``completed``; an exception escaping ``generate_media`` becomes an error of stage
``generation`` with its text. ``job.cancel()`` sets ``gen["abort"]`` and the model's ``_interrupt``;
``job.result()`` waits and returns :class:`GenerationResult` with the absolute paths added to ``file_list``;
``session.close()`` calls ``wgp.release_model()``. Simplified: one task per job, no manifests, previews, stdout
capture or web UI mode.
"""

from __future__ import annotations

import importlib
import inspect
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_GENERATION_LOCK = threading.Lock()


@dataclass(frozen=True)
class ProgressUpdate:
    phase: str
    status: str
    progress: int
    current_step: int | None
    total_steps: int | None
    raw_phase: str | None = None
    unit: str | None = None


@dataclass(frozen=True)
class SessionEvent:
    kind: str
    data: Any = None
    timestamp: float = field(default_factory=time.time)


@dataclass(frozen=True)
class GenerationError:
    message: str
    task_index: int | None = None
    task_id: Any = None
    stage: str | None = None


@dataclass(frozen=True)
class GenerationResult:
    success: bool
    generated_files: list[str]
    errors: list[GenerationError]
    total_tasks: int
    successful_tasks: int
    failed_tasks: int
    artifacts: tuple[Any, ...] = ()


class SessionStream:
    def __init__(self) -> None:
        self._queue: queue.Queue[Any] = queue.Queue()
        self._closed = threading.Event()
        self._sentinel = object()

    def put(self, kind: str, data: Any = None) -> None:
        if not self._closed.is_set():
            self._queue.put(SessionEvent(kind=kind, data=data))

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._queue.put(self._sentinel)

    def get(self, timeout: float | None = None) -> SessionEvent | None:
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        return None if item is self._sentinel else item

    def iter(self, timeout: float | None = None) -> Iterator[SessionEvent]:
        while True:
            event = self.get(timeout=timeout)
            if event is None:
                if self._closed.is_set():
                    break
                continue
            yield event


class SessionJob:
    def __init__(self, session: WanGPSession) -> None:
        self._session = session
        self.events = SessionStream()
        self._done = threading.Event()
        self._cancel_requested = threading.Event()
        self._result: GenerationResult | None = None

    def cancel(self) -> None:
        self._cancel_requested.set()
        self._session._request_cancel()

    def result(self, timeout: float | None = None) -> GenerationResult:
        if not self._done.wait(timeout=timeout):
            raise TimeoutError("WanGP session job timed out")
        assert self._result is not None
        return self._result

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested.is_set()


class WanGPSession:
    def __init__(self, *, root: str | os.PathLike[str], output_dir: str | os.PathLike[str] | None = None,
                 cli_args: Sequence[str] = ()) -> None:
        self._root = Path(root).resolve()
        self._output_dir = Path(output_dir).resolve() if output_dir is not None else None
        self._cli_args = tuple(cli_args)
        self._state: dict[str, Any] = {"model_type": "", "gen": {"file_list": [], "audio_file_list": [],
                                                                 "abort": False}, "loras": []}
        self._wgp: Any = None

    def ensure_ready(self) -> WanGPSession:
        if self._wgp is None:
            if str(self._root) not in sys.path:
                sys.path.insert(0, str(self._root))
            saved = sys.argv
            sys.argv = ["wgp.py", *self._cli_args]
            try:
                self._wgp = importlib.import_module("wgp")
            finally:
                sys.argv = saved
            # upstream prints its banner straight to the process's stdout (the child must keep it off the protocol)
            console = sys.__stdout__
            if console is not None:
                console.write(f"Powered by WanGP v{self._wgp.WanGP_version} - a DeepBeepMeep Production\n")
                console.flush()
            if self._output_dir is not None:
                self._output_dir.mkdir(parents=True, exist_ok=True)
                for name in ("save_path", "image_save_path", "audio_save_path"):
                    setattr(self._wgp, name, str(self._output_dir))
        return self

    def submit_task(self, settings: dict[str, Any]) -> SessionJob:
        job = SessionJob(self)
        threading.Thread(target=self._run, args=(job, dict(settings)), daemon=True).start()
        return job

    def close(self) -> None:
        with _GENERATION_LOCK:
            self.ensure_ready()._wgp.release_model()

    def _request_cancel(self) -> None:
        self._state["gen"]["abort"] = True
        if self._wgp.wan_model is not None:
            self._wgp.wan_model._interrupt = True

    def _run(self, job: SessionJob, settings: dict[str, Any]) -> None:
        wgp = self._wgp
        gen = self._state["gen"]
        errors: list[GenerationError] = []
        base = len(gen["file_list"])
        with _GENERATION_LOCK:
            gen["abort"] = False
            job.events.put("started", {"tasks": 1})
            task = {"id": 1, "params": settings, "plugin_data": {}}
            try:
                validated, problem = wgp.validate_task(task, self._state)
            except Exception as exc:  # upstream's worker thread reports it as a runtime error
                errors.append(GenerationError(str(exc) or type(exc).__name__, None, None, "runtime"))
                job.events.put("error", errors[-1])
            else:
                if validated is None:
                    errors.append(GenerationError(problem, 1, 1, "validation"))
                    job.events.put("error", errors[-1])
                else:
                    errors += self._generate(job, task, validated)
            files = [str(Path(f).resolve()) for f in gen["file_list"][base:]]
            if gen.get("abort") or job.cancel_requested:
                errors.append(GenerationError("Generation was cancelled", 1, 1, "cancelled"))
        result = GenerationResult(not errors, files, errors, 1, 0 if errors else 1, 1 if errors else 0)
        job._result = result
        job.events.put("completed", result)
        job._done.set()
        job.events.close()

    def _generate(self, job: SessionJob, task: dict[str, Any], settings: dict[str, Any]) -> list[GenerationError]:
        wgp = self._wgp
        errors: list[GenerationError] = []

        def send_cmd(command: str, data: Any = None) -> None:
            if command == "error":
                errors.append(GenerationError(str(data), 1, 1, "generation"))
                job.events.put("error", errors[-1])
            elif command == "progress":
                job.events.put("progress", _progress(data))
            else:
                job.events.put(command, data)

        expected = set(inspect.signature(wgp.generate_media).parameters)
        params = {k: v for k, v in {**settings, "state": self._state}.items() if k in expected}
        try:
            ok = wgp.generate_media(task, send_cmd, plugin_data={}, **params)
        except BaseException as exc:
            if not errors:
                errors.append(GenerationError(str(exc) or type(exc).__name__, 1, 1, "generation"))
            ok = False
        if not ok and not errors and not self._state["gen"].get("abort"):
            errors.append(GenerationError("Task 1 did not complete successfully", 1, 1, "generation"))
        return errors


def _progress(data: Any) -> ProgressUpdate:
    """Upstream's ``_build_progress_update`` for the messages the stand-in sends: ``[(step, total), status,
    total]`` or ``[0, status]``; the phase from the status's last ``|`` part (``Encoding Prompt`` →
    encoding_text, ``Denoising`` → inference, ``VAE Decoding`` → decoding), steps only for those phases."""
    step = total = None
    status = ""
    if isinstance(data, list) and data and isinstance(data[0], tuple):
        step, total = int(data[0][0]), int(data[0][1])
        status = str(data[1])
    elif isinstance(data, list) and data:
        status = str(data[1] if len(data) > 1 else data[0])
    parts = [part.strip() for part in status.split("|") if part.strip() and not part.strip().startswith("Prompt ")]
    label = next((part for part in parts if not re.fullmatch(r"[\d:.]+\s*[smh]?", part)), status)
    lowered = label.lower()
    if lowered.startswith("loading"):
        phase = "loading_model"
    elif "encoding" in lowered:
        phase = "encoding_text"
    elif "decoding" in lowered:
        phase = "decoding"
    else:
        phase = "inference"
    if phase == "loading_model":
        step = total = None
    if step is None or not total:
        percent = {"loading_model": 10, "encoding_text": 18, "decoding": 90}.get(phase, 15)
    elif phase == "decoding":
        percent = min(95, 85 + int(step / total * 10))
    else:
        percent = min(90, 20 + int(step / total * 65))
    return ProgressUpdate(phase, status, percent, step, total, label)


def init(*, root: str | os.PathLike[str] | None = None, config_path: Any = None,
         output_dir: str | os.PathLike[str] | None = None, callbacks: object | None = None,
         cli_args: Sequence[str] = (), console_output: bool = True, console_isatty: bool = True,
         webui_state: dict[str, Any] | None = None) -> WanGPSession:
    return WanGPSession(root=root or Path(__file__).resolve().parents[1], output_dir=output_dir,
                        cli_args=cli_args).ensure_ready()
