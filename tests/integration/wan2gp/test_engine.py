"""WanEngine against the real child program and the fake Wan2GP (tests/standins/wan2gp): message routing,
model kept loaded, memory freed only on request, crash → restart with the in-flight generation retryable,
out-of-memory, bad settings, cancellation, start-up failures."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from comfy_worker.errors import (
    ConfigError,
    EngineOutOfMemory,
    EngineRejected,
    EngineStartupError,
    EngineUnavailable,
    ExecutionFailed,
    ExecutionInterrupted,
    is_retryable,
)
from tests.integration.wan2gp.conftest import MODEL_MB, STANDIN
from worker_wgp import protocol as p
from worker_wgp.engine import WanEngine, check_wan2gp_path

MB = 1024 * 1024


def settings(prompt: str = "a red fox", **extra: object) -> dict[str, object]:
    return {"prompt": prompt, "resolution": "64x48", "video_length": 9, "num_inference_steps": 4, **extra}


def frames(path: Path) -> int:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=nb_read_frames,width,height", "-of", "json", str(path)],
        check=True, capture_output=True, text=True,
    )
    stream = json.loads(out.stdout)["streams"][0]
    assert (stream["width"], stream["height"]) == (64, 48)
    return int(stream["nb_read_frames"])


async def test_generate_routes_progress_and_files_and_keeps_the_model_loaded(engine: WanEngine) -> None:
    seen: list[p.Progress] = []
    first = await engine.generate("i2v", settings(), on_progress=seen.append)
    assert len(first.files) == 1 and first.files[0].is_file() and frames(first.files[0]) == 9
    assert first.files[0].parent == engine.config.output_dir.resolve()
    assert first.model == "i2v" and first.switched and first.load_s >= 0.3
    # as upstream reports them: the load as a status (turned into loading_model by the child), the prompt's
    # encoding, the denoising callback from step 0, VAE decoding at the last step
    assert [e.phase for e in seen][:2] == ["loading_model", "encoding_text"], seen
    assert seen[0].status.startswith("Loading model i2v") and seen[0].step is None
    assert [e.step for e in seen if e.phase == "inference"] == [0, 1, 2, 3], seen
    assert [(e.phase, e.step, e.total) for e in seen][-1] == ("decoding", 4, 4)
    assert all(e.id == seen[0].id for e in seen)
    assert engine.loaded_model == "i2v"

    again = await engine.generate("i2v", settings("a blue fox"))
    assert not again.switched and again.load_s < 0.3  # the model stayed loaded: no load between tasks
    other = await engine.generate("t2v", settings())
    assert other.switched and other.load_s >= 0.3 and engine.loaded_model == "t2v"
    status = await engine.status()
    assert status.model == "t2v" and not status.busy


async def test_memory_is_held_between_tasks_and_freed_only_on_request(engine: WanEngine) -> None:
    await engine.start()
    baseline = engine.memory.rss_bytes
    assert baseline is not None
    await engine.generate("i2v", settings())
    held = (await engine.status()).memory.rss_bytes
    assert held is not None and held - baseline >= MODEL_MB * MB * 0.9
    await asyncio.sleep(0.3)  # nothing frees it by itself
    assert ((await engine.status()).memory.rss_bytes or 0) - baseline >= MODEL_MB * MB * 0.9
    freed = await engine.free_memory()
    assert freed.rss_bytes is not None and held - freed.rss_bytes >= MODEL_MB * MB * 0.9
    assert engine.loaded_model is None and (await engine.status()).model is None
    assert (await engine.generate("i2v", settings())).switched  # loads again after a free


async def test_free_waits_for_the_running_generation(engine: WanEngine) -> None:
    order: list[str] = []
    started = asyncio.Event()

    async def gen() -> None:
        await engine.generate("i2v", settings("[standin:step_s=0.1]", num_inference_steps=6),
                              on_progress=lambda e: started.set() if e.phase == "inference" else None)
        order.append("generated")

    async def free() -> None:
        await started.wait()
        await engine.free_memory()
        order.append("freed")

    await asyncio.gather(gen(), free())
    assert order == ["generated", "freed"]
    assert engine.loaded_model is None


async def test_free_without_a_running_child_holds_nothing(engine: WanEngine) -> None:
    assert await engine.free_memory() == p.Memory()
    assert engine.pid is None  # freeing never starts the child


async def test_crash_mid_task_fails_it_retryable_and_the_child_restarts(engine: WanEngine) -> None:
    await engine.start()
    first_pid = engine.pid
    with pytest.raises(EngineUnavailable) as info:
        await engine.generate("i2v", settings("[standin:crash_at=2]"))
    assert is_retryable(info.value) and info.value.details["exit_code"] == 139
    assert "exited with code 139 unexpectedly" in str(info.value)
    await engine.ensure_running()  # the restart (with backoff) runs under the start lock: wait for it
    assert engine.restarts == 1 and engine.pid not in (None, first_pid) and engine.loaded_model is None
    out = await engine.generate("i2v", settings())
    assert out.files[0].is_file() and out.switched


async def test_crash_once_then_the_retry_completes(engine: WanEngine) -> None:
    with pytest.raises(EngineUnavailable):
        await engine.generate("i2v", settings("[standin:crash_once=1] a fox"))
    out = await engine.generate("i2v", settings("[standin:crash_once=1] a fox"))
    assert out.files[0].is_file()


async def test_out_of_memory_is_retryable_and_releases_the_model(engine: WanEngine) -> None:
    await engine.generate("i2v", settings())
    held = (await engine.status()).memory.rss_bytes or 0
    with pytest.raises(EngineOutOfMemory) as info:
        await engine.generate("i2v", settings("[standin:oom]"))
    assert is_retryable(info.value) and "unsufficient VRAM" in str(info.value)
    assert engine.loaded_model is None
    assert held - ((await engine.status()).memory.rss_bytes or 0) >= MODEL_MB * MB * 0.9
    with pytest.raises(EngineOutOfMemory) as info:
        await engine.generate("t2v", settings("[standin:oom_on_load]"))  # classified by the exception type
    assert info.value.details["exception"] == "OutOfMemoryError"


@pytest.mark.parametrize(
    ("prompt", "model", "error", "retryable"),
    [
        ("[standin:invalid]", "i2v", EngineRejected, False),
        ("a fox", "no_such_model", EngineRejected, False),
        ("[standin:raise]", "i2v", ExecutionFailed, False),
        ("[standin:download_error]", "t2v", EngineUnavailable, True),
    ],
)
async def test_errors_map_to_the_exception_tree(
    engine: WanEngine, prompt: str, model: str, error: type[Exception], retryable: bool
) -> None:
    with pytest.raises(error) as info:
        await engine.generate(model, settings(prompt))
    assert is_retryable(info.value) is retryable
    assert (await engine.generate("i2v", settings())).files  # the child is still fine


async def test_cancel_event_interrupts_the_generation(engine: WanEngine) -> None:
    cancel = asyncio.Event()

    def on_progress(event: p.Progress) -> None:
        if event.step == 2:
            cancel.set()

    with pytest.raises(ExecutionInterrupted):
        await engine.generate("i2v", settings("[standin:step_s=0.2]", num_inference_steps=100),
                              on_progress=on_progress, cancel=cancel)
    status = await engine.status()
    assert not status.busy and status.model == "i2v"  # interrupted, model kept, child alive
    assert (await engine.generate("i2v", settings())).files


async def test_a_caller_that_gives_up_stops_the_child_work_too(engine: WanEngine) -> None:
    started = asyncio.Event()
    task = asyncio.create_task(engine.generate(
        "i2v", settings("[standin:step_s=0.2]", num_inference_steps=100),
        on_progress=lambda e: started.set() if e.phase == "inference" else None))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not (await engine.status()).busy


async def test_lora_dir_comes_from_wan2gp(engine: WanEngine, tmp_path: Path) -> None:
    path = await engine.lora_dir("i2v")
    assert path == tmp_path / "loras" / "i2v" and path.is_dir()


async def test_child_output_goes_to_the_worker_log_and_stop_ends_the_child(engine: WanEngine) -> None:
    with capture_logs() as logs:
        await engine.generate("i2v", settings())
        pid = engine.pid
        await engine.stop(grace_s=5)
    assert pid is not None and engine.pid is None and engine.state == "stopped"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    events = {e["event"] for e in logs}
    assert {"wan2gp_starting", "wan2gp_ready", "wan2gp_output"} <= events
    assert any(e["event"] == "wan2gp_freed" for e in logs) is False  # stop releases inside the child, no free
    health = engine.health()
    assert health["engine"] == "wan2gp" and health["healthy"] is False


def test_wan2gp_path_without_wan2gp_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    for raw, text in [("", "not set"), (str(tmp_path / "nope"), "not a directory"), (str(tmp_path), "no wgp.py")]:
        with pytest.raises(ConfigError) as info:
            check_wan2gp_path(raw)
        assert info.value.variable == "WAN2GP_PATH" and text in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "wgp.py").write_text("")
    with pytest.raises(ConfigError, match=r"shared/api\.py"):
        check_wan2gp_path(str(tmp_path))
    assert check_wan2gp_path(str(STANDIN)) == STANDIN


async def test_a_wan2gp_that_cannot_import_fails_start_with_its_error(
    make_engine: Callable[..., WanEngine], tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    (broken / "shared").mkdir(parents=True)
    (broken / "wgp.py").write_text("")
    (broken / "shared" / "__init__.py").write_text("")
    (broken / "shared" / "api.py").write_text("raise ImportError('torch is not installed in this venv')\n")
    engine = make_engine(wan2gp_path=broken, restart_max=1)
    with pytest.raises(EngineStartupError, match="torch is not installed"):
        await engine.start()
    with pytest.raises(EngineStartupError, match=r"failed 2 times in a row .*torch is not installed"):
        await engine.ensure_running()  # one more start (after backoff), then it gives up
    with pytest.raises(EngineStartupError, match="failed 2 times in a row"):
        await engine.generate("i2v", settings())
    assert engine.state == "failed" and engine.pid is None


async def test_the_child_needs_nothing_but_the_standard_library(
    make_engine: Callable[..., WanEngine], tmp_path: Path
) -> None:
    """Wan2GP's python has no comfy_worker, structlog or httpx: run the child with site-packages switched off."""
    python = tmp_path / "bare-python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    python.chmod(0o755)
    engine = make_engine(python=str(python))
    out = await engine.generate("t2v", settings())
    assert out.files[0].is_file()


@pytest.mark.parametrize(
    ("model", "change", "field", "text"),
    [
        ("t2v", {"video_length": 10}, "video_length", "must be 4n+1 frames and at least 5 for t2v, got 10 "
         "(Wan2GP would render 9): use 9 or 13"),
        ("t2v", {"video_length": 2}, "video_length", "(Wan2GP would render 5): use 5"),
        ("ltxv_13B", {"video_length": 9, "resolution": "64x64"}, "video_length", "must be 8n+1 frames and at least 17"),
        ("t2v", {"resolution": "70x48"}, "resolution", "multiples of 16 for t2v, got '70x48' (Wan2GP would "
         "render 64x48): use 64x48 or 80x48"),
        ("ltxv_13B", {"resolution": "64x48"}, "resolution", "multiples of 32"),
        ("no_such_model", {}, "model", "is not a model of this Wan2GP checkout"),
        ("t2v", {"sample_solver": "dpm++_sde"}, "sample_solver", "must be one of unipc, euler, dpm++, causvid, "
         "lcm for t2v, got 'dpm++_sde'"),
        ("hunyuan", {"sample_solver": "euler"}, "sample_solver", "must be left out: it has no choice of solver"),
    ],
)
async def test_what_wan2gp_would_silently_change_is_refused_naming_the_key(
    engine: WanEngine, model: str, change: dict[str, object], field: str, text: str
) -> None:
    """Upstream rounds the size down to the VAE block and the length down to the latent step without a word
    (and an unknown model fails deep in its settings merge): the child refuses those, naming key and fix."""
    with pytest.raises(EngineRejected) as info:
        await engine.generate(model, {**settings(), **change})
    assert not is_retryable(info.value)
    assert info.value.details["field"] == field and f"params.{field}" in str(info.value)
    assert text in str(info.value)
    assert engine.loaded_model is None  # refused before anything was loaded


async def test_frame_counts_and_sizes_wan2gp_accepts_come_out_exactly(engine: WanEngine) -> None:
    out = await engine.generate("t2v", settings(video_length=13))
    assert frames(out.files[0]) == 13


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"video_prompt_type": "PI"}, "must contain V when video_guide is given, got 'PI'"),
        ({"video_prompt_type": "UV", "video_mask": "/m.mp4"}, "must contain A (and not U) when video_mask is given"),
        ({"video_prompt_type": "V", "image_refs": ["/r.png"]}, "must contain I when image_refs are given, got 'V'"),
    ],
)
async def test_media_wan2gp_would_drop_for_its_letters_is_refused(
    engine: WanEngine, change: dict[str, object], text: str
) -> None:
    with pytest.raises(EngineRejected) as info:
        await engine.generate("vace_14B", {**settings(), "video_guide": "/g.mp4", **change})
    assert info.value.details["field"] == "video_prompt_type" and text in str(info.value)
