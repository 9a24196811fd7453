"""A chain's checkpoint is a column of the task row: paths restored from it never reach outside the chain's own
folder or storage prefix (cleanup deletes them, ensure_local downloads to them)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from comfy_worker.errors import InputRejected
from comfy_worker.handlers.prompt_runner.executor import ChainEnv, ChainOptions, ChainRunner
from comfy_worker.handlers.prompt_runner.planner import plan
from comfy_worker.handlers.prompt_runner.profile import load_task_profile
from comfy_worker.handlers.prompt_runner.prompt_file import from_params
from comfy_worker.handlers.prompt_runner.state import ChainState
from comfy_worker.storage import LocalStorage

REPO = Path(__file__).resolve().parents[3]
TEST_CHAIN = REPO / "tests" / "integration" / "prompt_runner" / "chain"


async def _nothing(_state: dict[str, Any]) -> None:
    return None


def runner(tmp_path: Path, checkpoint: dict[str, Any]) -> tuple[ChainRunner, LocalStorage]:
    spec = from_params({"video_name": "v", "total_frames": 18, "frames_per_chunk": 9, "positive_prompt": "x"})
    profile = load_task_profile("cw_test_chain", TEST_CHAIN)
    fresh = plan(spec, join_mode=profile.join_mode)
    storage = LocalStorage(tmp_path / "storage")
    env = ChainEnv(
        client=None,  # type: ignore[arg-type]
        storage=storage,
        storage_prefix="prompt_runner/task-a",
        comfy_root=tmp_path / "output",
        files_root=tmp_path / "output" / "cw_chains" / "task-a",
        work_dir=tmp_path / "work",
        save_state=_nothing,
        progress=_nothing,
        cancel=asyncio.Event(),
    )
    state = ChainState.restore({**ChainState(fresh).to_dict(), **checkpoint}, fresh)
    return ChainRunner(env, spec, profile, state, ChainOptions()), storage


async def test_cleanup_touches_nothing_a_forged_checkpoint_points_elsewhere(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    other_task = tmp_path / "storage" / "prompt_runner" / "task-b" / "v" / "final.mp4"
    other_task.parent.mkdir(parents=True)
    other_task.write_bytes(b"another task's output")
    own = tmp_path / "storage" / "prompt_runner" / "task-a" / "v" / "videos" / "seg.mp4"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"ours")
    r, _ = runner(
        tmp_path,
        {
            "artifacts": {
                "../../../victim.txt": "prompt_runner/task-b/v/final.mp4",
                "v/videos/seg.mp4": "prompt_runner/task-a/v/videos/seg.mp4",
            },
            "comfy_files": ["../../../victim.txt", "/etc/hostname"],
        },
    )
    removed = await r.cleanup()
    assert removed == ["prompt_runner/task-a/v/videos/seg.mp4"] and not own.exists()
    assert victim.read_text() == "keep me" and other_task.exists()


async def test_ensure_local_refuses_paths_out_of_the_chain_folder_and_foreign_objects(tmp_path: Path) -> None:
    r, _ = runner(tmp_path, {"artifacts": {"v/latents/x.latent": "prompt_runner/task-b/v/latents/x.latent"}})
    with pytest.raises(InputRejected, match="leads out of"):
        await r.ensure_local("../../../../etc/passwd")
    with pytest.raises(InputRejected, match="outside this task's storage"):
        await r.ensure_local("v/latents/x.latent")
    assert r.local("v/latents/x.latent") == tmp_path / "output" / "cw_chains" / "task-a" / "v/latents/x.latent"
