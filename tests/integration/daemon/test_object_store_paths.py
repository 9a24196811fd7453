"""The command-line paths that store through STORAGE_URL besides a task's own outputs, on a real S3 server (moto
in server mode), real Postgres and the real test ComfyUI (issue 21):

* ``comfy-worker submit --input NODE.FIELD=FILE`` stages the file in the bucket, and the daemon's task reads it
  from there (the local store does not even exist);
* ``comfy-worker build TYPE --set image=FILE --submit`` stages the file in the bucket;
* ``comfy-worker run WF --submit --wait`` and ``comfy-worker batch CONFIG --fleet`` download the tasks' outputs
  from the bucket.

The CLIs are subprocesses that inherit the test's environment (``AWS_*`` and STORAGE_URL, set by the ``s3``
fixture); the daemon runs in-process with the same STORAGE_URL in its settings.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import uuid
from pathlib import Path

import pytest

from comfy_worker.handlers.prompt_runner.join import count_frames
from comfy_worker.models import TaskStatus
from comfy_worker.store.postgres import PostgresStore
from tests.integration.daemon import workflows as wf
from tests.integration.daemon.conftest import Harness
from tests.integration.daemon.test_daemon_comfy import make_mp4
from tests.integration.daemon.test_submit_cli import cli
from tests.integration.explore.test_batch_local import batch_process, read_csv
from tests.integration.explore.test_cli import sh
from tests.integration.explore.workflows import tiny_video, write_batch
from tests.integration.wan.conftest import ffmpeg_media
from tests.integration.wan.test_build_cli import cli as build_cli
from tests.s3_server import BUCKET, MotoServer


@pytest.fixture
def s3(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """STORAGE_URL=s3://renders/<fresh prefix> and moto's AWS_* in os.environ (for obstore in this process and
    for the CLI subprocesses); the prefix is returned."""
    prefix = f"paths-{uuid.uuid4().hex[:8]}"
    for key, value in {**moto.env(), "STORAGE_URL": f"s3://{BUCKET}/{prefix}"}.items():
        monkeypatch.setenv(key, value)
    return prefix


async def s3_daemon(harness: Harness, worker_id: str, prefix: str) -> None:
    await harness.start_daemon(worker_id, settings=harness.settings(STORAGE_URL=f"s3://{BUCKET}/{prefix}"))


@pytest.mark.comfyui
async def test_submit_input_is_staged_in_the_bucket_and_the_task_reads_it_there(
    harness: Harness, moto: MotoServer, s3: str, tmp_path: Path
) -> None:
    await s3_daemon(harness, "comfy-worker-s3-submit", s3)
    clip = tmp_path / "clip.mp4"
    make_mp4(clip, frames=5)
    graph = tmp_path / "graph.json"
    graph.write_text(json.dumps(wf.video_in()))
    code, out, err = await cli(harness, "submit", str(graph), "--input", f"1.video={clip}", "--wait")
    assert code == 0, err[-3000:]
    task_id, output_url = out.split()
    task = await harness.store.get_task(task_id)
    assert task.status is TaskStatus.COMPLETE and task.output_url == output_url
    assert task.params["inputs"] == [{"storage_path": f"inputs/{task_id}/clip.mp4", "node_id": "1", "field": "video"}]
    assert moto.object(BUCKET, f"{s3}/inputs/{task_id}/clip.mp4") == clip.read_bytes()
    [video] = task.result["outputs"]
    body = moto.object(BUCKET, f"{s3}/{video['storage_path']}")
    assert hashlib.sha256(body).hexdigest() == video["sha256"] and "X-Amz-Signature=" in output_url
    (tmp_path / "out.mp4").write_bytes(body)
    assert await count_frames(tmp_path / "out.mp4", decode=True) == 5  # the input's 5 frames went through
    assert not harness.storage_dir.exists()  # the bucket was the only place the input could come from


async def test_build_submit_stages_local_media_in_the_bucket(
    pg_dsn: str, moto: MotoServer, s3: str, tmp_path: Path
) -> None:
    image = ffmpeg_media(tmp_path / "start.png", "image")
    code, out, err = await build_cli(
        "build", "comfyui_i2v", "--set", f"image={image}", "--submit",
        env={"DATABASE_URL": pg_dsn, "LOCAL_STORAGE_DIR": str(tmp_path / "local")},
    )  # fmt: skip
    assert code == 0, err[-3000:]
    [task_id] = out.split()
    store = PostgresStore(pg_dsn)
    await store.connect()
    try:
        task = await store.get_task(task_id)
    finally:
        await store.close()
    assert task.params["image"] == {"storage_path": f"inputs/{task_id}/start.png"}
    assert moto.object(BUCKET, f"{s3}/inputs/{task_id}/start.png") == image.read_bytes()
    assert not (tmp_path / "local").exists()


@pytest.mark.comfyui
async def test_run_submit_wait_downloads_the_outputs_from_the_bucket(
    harness: Harness, moto: MotoServer, s3: str, tmp_path: Path
) -> None:
    await s3_daemon(harness, "explore-run-s3", s3)
    (tmp_path / "wf.json").write_text(json.dumps(tiny_video(seconds=0.3)))
    code, out, err = await sh(
        sys.executable, "-m", "comfy_worker", "run", "wf.json", "--submit", "--wait",
        cwd=tmp_path, env={"DATABASE_URL": harness.dsn},
    )  # fmt: skip
    assert code == 0, err[-2000:]
    task_id, video = out.split()
    task = await harness.store.get_task(task_id)
    [output] = task.result["outputs"]
    assert task.status is TaskStatus.COMPLETE and Path(video) == tmp_path / "output" / task_id / output["filename"]
    assert Path(video).read_bytes() == moto.object(BUCKET, f"{s3}/{output['storage_path']}")
    assert not harness.storage_dir.exists()


@pytest.mark.comfyui
async def test_a_fleet_batch_downloads_each_runs_outputs_from_the_bucket(
    harness: Harness, moto: MotoServer, s3: str, tmp_path: Path
) -> None:
    await s3_daemon(harness, "explore-fleet-s3", s3)
    config = write_batch(tmp_path, workflow=tiny_video(seconds=0.3), num_samples=2, seeds_per_sample=1)
    proc = await batch_process(config, "--fleet", env={"DATABASE_URL": harness.dsn})
    _out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode == 0, err.decode()[-3000:]
    [batch] = (tmp_path / "output").glob("batch_*")
    rows = read_csv(batch / "metadata.csv")
    assert len(rows) == 2 and all(r["status"] == "complete" for r in rows), rows
    stored = sorted(hashlib.sha256(moto.object(BUCKET, key)).hexdigest() for key in moto.keys(BUCKET, f"{s3}/comfy/"))
    assert sorted(hashlib.sha256((batch / r["outputs"]).read_bytes()).hexdigest() for r in rows) == stored
    assert not harness.storage_dir.exists()
