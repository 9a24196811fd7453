"""prompt_runner chains through the real daemon on the real test ComfyUI (CPU stand-ins of the Wan nodes)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from comfy_worker.handlers.prompt_runner.join import count_frames
from comfy_worker.models import NewTask, TaskStatus
from tests.integration.daemon.conftest import FAST, Harness, wait_task
from tests.integration.engine.conftest import ComfyServer
from tests.integration.prompt_runner.conftest import CHAIN_PROFILE, chain_params, comfy_history, latent_saves
from tests.s3_server import BUCKET, MotoServer

pytestmark = [pytest.mark.comfyui]
REPO = Path(__file__).resolve().parents[3]


async def enqueue(harness: Harness, params: dict, max_attempts: int = 3) -> str:
    return (await harness.store.enqueue(NewTask("prompt_runner", params, max_attempts=max_attempts))).task_id


async def test_three_chunk_chain_renders_joins_and_cleans_up(harness: Harness, comfyui_server: ComfyServer) -> None:
    params = chain_params(total_frames=27)  # 3 x 9, each 4k+1: nothing to trim, so the join is a stream copy
    name = params["video_name"]
    await harness.start_daemon(settings=harness.settings(COMFY_OUTPUT_DIR=str(comfyui_server.output_dir)))
    tid = await enqueue(harness, params)
    task = await wait_task(harness.store, tid, timeout=240)
    assert task.status is TaskStatus.COMPLETE, (task.error, task.error_details)

    final = harness.storage_dir / "prompt_runner" / tid / name / "final" / f"{name}.mp4"
    assert final.is_file()
    assert task.output_url == final.resolve().as_uri()
    assert await count_frames(final, decode=True) == 27
    assert task.result["frames"] == 27
    assert task.result["plan"]["chunks"] == 3
    assert task.result["join_mode"] == "copy"

    cp = task.checkpoint
    assert cp["completed"] == [f"{name}-{n:03d}-{'high' if n % 2 else 'low'}" for n in range(1, 7)]
    assert cp["completed_chunks"] == 3
    assert cp["segments"] == {f"{name}/videos/{name}_chunk_{c:03d}.mp4": 9 for c in (1, 2, 3)}
    assert cp["references"][f"{name}/references/{name}_chunk_001_ref.png"]["frame_index"] == 8  # 9 - offset 1
    # intermediates gone from storage; the final video and the state record stay
    video_root = harness.storage_dir / "prompt_runner" / tid / name
    left = sorted(str(p.relative_to(video_root)) for p in video_root.rglob("*") if p.is_file())
    assert left == [f"final/{name}.mp4", f"state/{name}.json"]
    # each step ran exactly once in ComfyUI, and ComfyUI's history forgot them once the chain ended
    assert {job: len(pids) for job, pids in task.result["prompts"].items()} == dict.fromkeys(cp["completed"], 1)
    await harness.stop_all()
    assert latent_saves(await comfy_history(comfyui_server.base_url), name) == {}
    # files ComfyUI reads by path lived under this task's own root (another task of the same video name, a
    # re-render or a chain interleaved on this box, can never hand it a stale latent or reference frame),
    # removed with the task's other files once it ended
    assert not (comfyui_server.output_dir / "comfy_worker" / tid).exists()
    assert not (comfyui_server.output_dir / name / "references").exists()
    assert not (comfyui_server.output_dir / name / "latents").exists()


async def test_a_chain_handing_files_over_through_core_nodes_completes(
    harness: Harness, comfyui_server: ComfyServer
) -> None:
    """The stock-node chain's way (core SaveLatent with an absolute prefix, LoadLatent and LoadImage by absolute
    path) through the daemon: on the GPU the path checks first refused these names, then the per-task output
    prefix moved the latent away from where the LOW step loads it."""
    params = chain_params(profile="cw_core_chain")
    await harness.start_daemon(settings=harness.settings(COMFY_OUTPUT_DIR=str(comfyui_server.output_dir)))
    tid = await enqueue(harness, params)
    task = await wait_task(harness.store, tid, timeout=240)
    assert task.status is TaskStatus.COMPLETE, (task.error, task.error_details)
    assert task.result["frames"] == 25 and task.checkpoint["completed_chunks"] == 3
    name = params["video_name"]
    final = harness.storage_dir / "prompt_runner" / tid / name / "final" / f"{name}.mp4"
    assert await count_frames(final, decode=True) == 25


async def test_bad_params_fail_permanently_naming_the_field(harness: Harness, comfyui_server: ComfyServer) -> None:
    await harness.start_daemon(settings=harness.settings(COMFY_OUTPUT_DIR=str(comfyui_server.output_dir)))
    tid = await enqueue(harness, chain_params(total_frames="many"))
    task = await wait_task(harness.store, tid, timeout=60)
    assert task.status is TaskStatus.FAILED and task.attempts == 1
    assert "total_frames" in task.error


async def test_without_comfy_output_dir_the_task_fails_naming_the_setting(harness: Harness) -> None:
    await harness.start_daemon()
    tid = await enqueue(harness, chain_params())
    task = await wait_task(harness.store, tid, timeout=60)
    assert task.status is TaskStatus.FAILED and task.attempts == 1
    assert "COMFY_OUTPUT_DIR" in task.error


@dataclass
class ChainStorage:
    """Where a chain's files are stored: ``env`` selects it (worker env and settings); ``read`` / ``names`` look
    at it as the test sees it (a storage path's bytes; the file names under a storage folder)."""

    env: dict[str, str]
    read: Callable[[str], bytes]
    names: Callable[[str], list[str]]


@pytest.fixture(params=["local", "s3"])
def chain_storage(request: pytest.FixtureRequest, harness: Harness, monkeypatch: pytest.MonkeyPatch) -> ChainStorage:
    """The local store, or a bucket on a real S3 server (moto): its AWS_* go into os.environ for the daemon in
    this process and the worker subprocess."""
    if request.param == "local":
        root = harness.storage_dir
        return ChainStorage(
            {},
            lambda path: (root / path).read_bytes(),
            lambda folder: sorted(p.name for p in (root / folder).iterdir()),
        )
    moto: MotoServer = request.getfixturevalue("moto")
    for key, value in moto.env().items():
        monkeypatch.setenv(key, value)
    prefix = f"chain-{uuid.uuid4().hex[:8]}"

    def names(folder: str) -> list[str]:
        return sorted(key.rsplit("/", 1)[1] for key in moto.keys(BUCKET, f"{prefix}/{folder}/"))

    return ChainStorage(
        {"STORAGE_URL": f"s3://{BUCKET}/{prefix}"}, lambda path: moto.object(BUCKET, f"{prefix}/{path}"), names
    )


@pytest.mark.slow
async def test_worker_killed_after_chunk_2_another_resumes_at_chunk_3(
    harness: Harness, comfyui_server: ComfyServer, chain_storage: ChainStorage, tmp_path: Path
) -> None:
    """The rescuer is "another machine": it has none of the chain's files but what the store holds (on S3:
    the intermediates come back from the bucket; the local store is never made)."""
    # every sampler call takes ~0.6 s so the kill lands between chunk 2 and the end of chunk 3
    params = chain_params(overrides={"nodes": {"54": {"delay_s": 0.6}}}, keep_intermediate=True)
    name = params["video_name"]
    lease = {"LEASE_SECONDS": "3"}
    env = {
        **os.environ,
        **FAST,
        **lease,
        "DATABASE_URL": harness.dsn,
        "COMFY_URL": harness.comfy_url,
        "COMFY_OUTPUT_DIR": str(comfyui_server.output_dir),
        "LOCAL_STORAGE_DIR": str(harness.storage_dir),
        "PROFILES_DIR": str(CHAIN_PROFILE.parent),
        "PYTHONPATH": str(REPO),
        **chain_storage.env,
    }
    tid = await enqueue(harness, params)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "comfy_worker", "--worker-id", "comfy-worker-doomed", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    low2 = f"{name}-004-low"
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 180
        while True:
            task = await harness.store.get_task(tid)
            if task.checkpoint and low2 in task.checkpoint.get("completed", []):
                break
            assert task.status not in (TaskStatus.COMPLETE, TaskStatus.FAILED), task.error
            assert proc.returncode is None, "the first worker exited on its own"
            assert loop.time() < deadline, f"chunk 2 not done in time: {task.checkpoint}"
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    at_kill = (await harness.store.get_task(tid)).checkpoint
    done_before = [f"{name}-{n:03d}-{'high' if n % 2 else 'low'}" for n in range(1, 5)]
    assert at_kill["completed"] == done_before
    assert task.worker_id == "comfy-worker-doomed"
    # the next worker is "another machine": nothing of this video is left in ComfyUI's output dir
    shutil.rmtree(comfyui_server.output_dir / name, ignore_errors=True)
    shutil.rmtree(comfyui_server.output_dir / "comfy_worker" / tid, ignore_errors=True)

    # KEEP_COMFY_FILES: ComfyUI's history stays, to count what ran
    with capture_logs() as logs:
        await harness.start_daemon("comfy-worker-rescuer", settings=harness.settings(
            COMFY_OUTPUT_DIR=str(comfyui_server.output_dir), KEEP_COMFY_FILES="true", **lease,
            **chain_storage.env))  # fmt: skip
        task = await wait_task(harness.store, tid, timeout=240)
    assert task.status is TaskStatus.COMPLETE, (task.error, task.error_details)
    assert task.worker_id == "comfy-worker-rescuer" and task.attempts == 2
    final = tmp_path / f"{name}.mp4"
    final.write_bytes(chain_storage.read(f"prompt_runner/{tid}/{name}/final/{name}.mp4"))
    assert await count_frames(final, decode=True) == 25

    # chunks 1-2 were not re-rendered: same ComfyUI prompts as at the kill, and ComfyUI ran each HIGH once
    for job_id in done_before:
        assert task.result["prompts"][job_id] == at_kill["prompts"][job_id]
        assert len(at_kill["prompts"][job_id]) == 1
    saves = latent_saves(await comfy_history(comfyui_server.base_url), name)
    assert len(saves["chunk_001"]) == 1 and len(saves["chunk_002"]) == 1
    assert saves["chunk_003"][-1] in task.result["prompts"][f"{name}-005-high"]
    # what chunks 1-2 left came back from the store: chunk 2's reference frame for chunk 3, their segments
    fetched = {e["plan_path"] for e in logs if e["event"] == "artifact_fetched"}
    assert {f"{name}/videos/{name}_chunk_{c:03d}.mp4" for c in (1, 2)} <= fetched, fetched
    assert f"{name}/references/{name}_chunk_002_ref.png" in fetched, fetched
    # keep_intermediate: the segments the resumed run joined are all in storage
    videos = chain_storage.names(f"prompt_runner/{tid}/{name}/videos")
    assert videos == [f"{name}_chunk_{c:03d}.mp4" for c in (1, 2, 3)]
    if chain_storage.env:
        assert not harness.storage_dir.exists()  # on S3 nothing went to a local store


async def test_a_permanent_step_error_fails_the_task_naming_the_step(
    harness: Harness, comfyui_server: ComfyServer
) -> None:
    await harness.start_daemon(settings=harness.settings(COMFY_OUTPUT_DIR=str(comfyui_server.output_dir)))
    params = chain_params(overrides={"nodes": {"54": {"width": 7}}})  # below the node's minimum: ComfyUI refuses
    tid = await enqueue(harness, params)
    task = await wait_task(harness.store, tid, timeout=60)
    assert task.status is TaskStatus.FAILED and task.attempts == 1, task.error
    # 1 + the profile's defaults.max_retries (2) tries would be allowed; a permanent error stops at the first
    assert task.error.startswith(f"step HIGH 1/3 ({params['video_name']}-001-high, try 1/3): ComfyUI rejected")
    assert task.error_details["error_type"] == "WorkflowInvalid"


async def test_a_node_type_missing_on_the_server_fails_the_task_at_once_before_queueing(
    harness: Harness, comfyui_server: ComfyServer, tmp_path: Path
) -> None:
    chain = tmp_path / "chain"
    shutil.copytree(CHAIN_PROFILE.parent, chain)
    wf_path = chain / "cw_test_chain.json"
    workflow = json.loads(wf_path.read_text())
    workflow["53"]["class_type"] = "CWTextEncodeFromAMissingPack"
    wf_path.write_text(json.dumps(workflow))
    settings = harness.settings(COMFY_OUTPUT_DIR=str(comfyui_server.output_dir), PROFILES_DIR=str(chain))
    await harness.start_daemon(settings=settings)
    params = chain_params()
    tid = await enqueue(harness, params)
    task = await wait_task(harness.store, tid, timeout=60)
    assert task.status is TaskStatus.FAILED and task.attempts == 1, task.error
    assert task.error.startswith(f"step HIGH 1/3 ({params['video_name']}-001-high, try 1/"), task.error
    assert "CWTextEncodeFromAMissingPack are not installed on this ComfyUI" in task.error
    assert task.error_details["error_type"] == "WorkflowInvalid"
    assert task.error_details["missing_node_types"] == ["CWTextEncodeFromAMissingPack"]
    assert latent_saves(await comfy_history(comfyui_server.base_url), params["video_name"]) == {}  # nothing ran


async def test_a_retryable_step_error_is_retried_within_the_attempt(
    harness: Harness, comfyui_server: ComfyServer
) -> None:
    # the sampler reports progress every ~3 s; a 1 s stall timer expires on every try (ExecutionTimeout)
    settings = harness.settings(COMFY_OUTPUT_DIR=str(comfyui_server.output_dir), STALL_TIMEOUT_S="1")
    await harness.start_daemon(settings=settings)
    params = chain_params(overrides={"nodes": {"54": {"delay_s": 12.0}}}, max_retries=1)
    tid = await enqueue(harness, params, max_attempts=1)
    task = await wait_task(harness.store, tid, timeout=90)
    assert task.status is TaskStatus.FAILED, task.error
    assert task.error.startswith(f"step HIGH 1/3 ({params['video_name']}-001-high, try 2/2): ")
    assert task.error_details["error_type"] == "ExecutionTimeout"


async def test_profile_combine_workflow_joins_progressively_in_comfyui(
    harness: Harness, comfyui_server: ComfyServer
) -> None:
    await harness.start_daemon(settings=harness.settings(COMFY_OUTPUT_DIR=str(comfyui_server.output_dir)))
    params = chain_params(profile="cw_test_chain_combine")
    name = params["video_name"]
    tid = await enqueue(harness, params)
    task = await wait_task(harness.store, tid, timeout=240)
    assert task.status is TaskStatus.COMPLETE, (task.error, task.error_details)
    assert task.result["join_mode"] == "comfyui" and task.result["frames"] == 25
    combines = [f"{name}-{n:03d}-combine" for n in (7, 8, 9)]
    assert task.checkpoint["completed"][-3:] == combines
    assert all(len(task.result["prompts"][j]) == 1 for j in combines)
    final = harness.storage_dir / "prompt_runner" / tid / name / "final" / f"{name}.mp4"
    assert await count_frames(final, decode=True) == 25
    video_root = final.parents[1]
    left = sorted(str(p.relative_to(video_root)) for p in video_root.rglob("*") if p.is_file())
    assert left == [f"final/{name}.mp4", f"state/{name}.json"]


def gray_frames(path: Path) -> list[bytes]:
    """Every frame of ``path`` decoded by ffmpeg as 32x32 grey pixels (the test chain's frame size)."""
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "gray", "-"],
        check=True, capture_output=True, timeout=120,
    ).stdout  # fmt: skip
    return [raw[i : i + 32 * 32] for i in range(0, len(raw), 32 * 32)]


def nearest(frame: bytes, candidates: list[bytes]) -> int:
    """The index of the candidate closest to ``frame`` pixel by pixel (survives re-encoding, unlike equality)."""
    return min(range(len(candidates)), key=lambda i: sum(abs(a - b) for a, b in zip(frame, candidates[i], strict=True)))


@pytest.mark.parametrize(
    ("profile", "overlap", "join_mode"),
    [("cw_test_chain", 0, "reencode"), ("cw_test_chain", 2, "reencode"), ("cw_test_chain_combine", 2, "comfyui")],
)
async def test_a_total_that_is_not_4k_plus_1_joins_to_exactly_that_many_frames(
    harness: Harness, comfyui_server: ComfyServer, profile: str, overlap: int, join_mode: str
) -> None:
    """22 frames in chunks of 9: the last chunk covers 4 frames (8 with an overlap of 2), renders 5 (9), Wan's
    next 4k+1, and the join keeps exactly its share, so the video has 22 frames, counted by ffprobe."""
    params = chain_params(total_frames=22, profile=profile, overrides={"overlap": overlap}, keep_intermediate=True)
    name = params["video_name"]
    await harness.start_daemon(settings=harness.settings(COMFY_OUTPUT_DIR=str(comfyui_server.output_dir)))
    tid = await enqueue(harness, params)
    task = await wait_task(harness.store, tid, timeout=240)
    assert task.status is TaskStatus.COMPLETE, (task.error, task.error_details)
    kept = [9, 9, 4] if overlap == 0 else [9, 7, 6]
    rendered = [9, 9, 5] if overlap == 0 else [9, 9, 9]
    assert task.result["plan"]["frames_kept"] == kept and task.result["plan"]["frames_rendered"] == rendered
    video_root = harness.storage_dir / "prompt_runner" / tid / name
    segments = [video_root / "videos" / f"{name}_chunk_{c:03d}.mp4" for c in (1, 2, 3)]
    assert [await count_frames(s, decode=True) for s in segments] == rendered  # each chunk rendered 4k+1 frames
    final = video_root / "final" / f"{name}.mp4"
    assert await count_frames(final, decode=True) == 22  # ffprobe -count_frames: every frame decoded
    assert task.result["frames"] == 22 and task.result["join_mode"] == join_mode
    # and they are the right 22: each segment's kept range, in order (not its overlap, not its surplus)
    parts = [gray_frames(s) for s in segments]
    got = gray_frames(final)
    origins = [
        (c, nearest(frame, parts[c])) for c, frame in zip([0] * 9 + [1] * kept[1] + [2] * kept[2], got, strict=True)
    ]
    start = 0 if overlap == 0 else overlap
    expected = (
        [(0, i) for i in range(9)] + [(1, start + i) for i in range(kept[1])] + [(2, start + i) for i in range(kept[2])]
    )
    assert origins == expected
