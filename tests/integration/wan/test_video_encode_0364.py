"""VIDEO_ENCODE=worker against a real ComfyUI 0.3.64 that loads the worker's node folder as its supervisor passes it:
ComfyWorkerSaveVideo hands the frames over, the worker encodes them with real ffmpeg, and the result is the video
SaveVideo writes from the same frames (codec, pixel format, size, frame count, frame rate, audio, metadata; pictures
within encoder noise of each other). Natural content: ffmpeg's ``testsrc2`` with a sine tone, through LoadVideo →
GetVideoComponents → CreateVideo, as a decoded Wan video reaches SaveVideo. Through the daemon too: a ``comfy``
task's SaveVideo is swapped and its mp4 stored; VIDEO_ENCODE=comfyui, and a server without the node, keep SaveVideo."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from comfy_worker.engine import ComfyClient
from comfy_worker.engine.frames import NODE, NODES_DIR, encode_handovers, nodes_paths_yaml
from tests.comfy_server_0364 import comfy_0364_available, comfy_0364_paths
from tests.integration.daemon.conftest import Harness, wait_task
from tests.integration.wan.conftest import Comfy0364, connected, daemon_harness, running_0364
from tests.media_probe import probe, stream

pytestmark = pytest.mark.comfyui
FPS, FRAMES, SIZE = 16, 25, (320, 240)


@pytest.fixture(scope="module")
def comfy_nodes() -> Iterator[Comfy0364]:
    """ComfyUI 0.3.64 with the worker's custom-node folder registered, as the supervisor launches it."""
    with running_0364(["--extra-model-paths-config", str(nodes_paths_yaml())]) as server:
        yield server


@pytest.fixture
async def client(comfy_nodes: Comfy0364) -> AsyncIterator[ComfyClient]:
    async with connected(comfy_nodes.base_url) as c:
        yield c


@pytest.fixture
async def harness64_nodes(pg_dsn: str, comfy_nodes: Comfy0364, tmp_path: Path) -> AsyncIterator[Harness]:
    async with daemon_harness(pg_dsn, comfy_nodes.base_url, tmp_path / "storage") as h:
        yield h


def natural_clip(dest: Path, *, audio: bool) -> Path:
    """testsrc2 (moving shapes, gradients, text) at FPS for FRAMES frames, with a stereo sine tone when asked."""
    w, h = SIZE
    args = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate={FPS}"]  # fmt: skip
    if audio:
        args += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-ac", "2", "-c:a", "aac", "-shortest"]
    args += ["-frames:v", str(FRAMES), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(dest)]
    subprocess.run(args, check=True)
    return dest


def graph(clip: str, *, audio: bool, worker_prefix: str | None, stock_prefix: str | None) -> dict[str, Any]:
    g: dict[str, Any] = {
        "1": {"class_type": "LoadVideo", "inputs": {"file": clip}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": "CreateVideo", "inputs": {"images": ["2", 0], "fps": float(FPS)}},
    }
    if audio:
        g["3"]["inputs"]["audio"] = ["2", 1]
    for node_id, cls, prefix in (("4", "SaveVideo", stock_prefix), ("5", NODE, worker_prefix)):
        if prefix:
            inputs = {"video": ["3", 0], "filename_prefix": prefix, "format": "auto", "codec": "auto"}
            g[node_id] = {"class_type": cls, "inputs": inputs}
    return g


def psnr(a: Path, b: Path) -> float:
    out = subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-i", str(a), "-i", str(b), "-lavfi", "psnr", "-f", "null", "-"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    line = next(x for x in out.stderr.splitlines() if "PSNR" in x and "average:" in x)
    return float(line.split("average:")[1].split()[0])


@pytest.mark.parametrize(
    ("audio", "in_place"), [(True, True), (False, False)], ids=["with_audio_read_in_place", "silent_downloaded"]
)
async def test_the_worker_encodes_the_video_savevideo_writes(
    client: ComfyClient, comfy_nodes: Comfy0364, tmp_path: Path, audio: bool, in_place: bool
) -> None:
    """In place: the worker sees ComfyUI's output folder (launched by it, or COMFY_OUTPUT_DIR) and reads the
    hand-over there, leaving it to ComfyUI's cleanup; otherwise it is downloaded through /view and removed."""
    client.output_dir = comfy_nodes.workdir / "output" if in_place else None
    clip = natural_clip(tmp_path / "clip.mp4", audio=audio)
    name = await client.upload_file(clip, subfolder="encode-test", overwrite=True)
    g = graph(name, audio=audio, worker_prefix="enc/worker", stock_prefix="enc/stock")
    prompt_id = await client.queue_prompt(g)
    history = await client.wait(prompt_id, deadline_s=120, stall_s=120)
    dest = tmp_path / "out"
    handed = await client.download_outputs(history, dest)
    assert sorted(Path(i.filename).suffix for i in handed) == sorted(
        [".mp4", ".cwframes", *([".cwaudio"] if audio else [])]
    )
    sources = [i.path for i in handed if i.filename.endswith((".cwframes", ".cwaudio"))]
    assert all(p.is_relative_to(comfy_nodes.workdir / "output") != p.is_relative_to(dest) for p in sources)
    assert all(p.is_relative_to(dest) is not in_place for p in sources)
    items = sorted(await encode_handovers(handed, dest), key=lambda i: i.node_id)  # history: execution order
    assert all(p.exists() is in_place for p in sources)  # read in place: left for ComfyUI's cleanup

    expected = [("4", "video", "video/mp4"), ("5", "video", "video/mp4")]
    assert [(i.node_id, i.kind, i.content_type) for i in items] == expected
    stock, worker = (i.path for i in items)
    assert worker.name == stock.name.replace("stock", "worker")  # SaveVideo's name: <prefix>_00001_.mp4
    assert not [p for p in dest.rglob("*") if p.suffix in (".cwframes", ".cwaudio", ".ffmeta")]
    assert worker.is_relative_to(dest)
    assert items[1].bytes == worker.stat().st_size
    a, b = probe(stock), probe(worker)
    va, vb = stream(a, "video"), stream(b, "video")
    assert va is not None and vb is not None
    for key in ("codec_name", "pix_fmt", "width", "height", "r_frame_rate", "nb_read_frames"):
        assert va[key] == vb[key], key
    assert (vb["codec_name"], vb["pix_fmt"], vb["width"], vb["height"]) == ("h264", "yuv420p", *SIZE)
    assert (vb["r_frame_rate"], int(vb["nb_read_frames"])) == (f"{FPS}/1", FRAMES)
    aa, ab = stream(a, "audio"), stream(b, "audio")
    if audio:
        assert aa is not None and ab is not None
        for key in ("codec_name", "sample_rate", "channels"):
            assert aa[key] == ab[key], key
        assert ab["codec_name"] == "aac"
        assert abs(float(aa["duration"]) - float(ab["duration"])) < 0.05
    else:
        assert aa is None and ab is None
    tags_a, tags_b = a["format"].get("tags", {}), b["format"].get("tags", {})
    assert json.loads(tags_b["prompt"]) == json.loads(tags_a["prompt"])  # the graph, as SaveVideo embeds it
    assert psnr(stock, worker) > 40  # the same frames through two x264 runs: differences are encoder noise
    for item in items:  # hashed as stored
        assert item.sha256 and len(item.sha256) == 64


async def test_a_comfy_task_stores_the_worker_encoded_video(
    harness64_nodes: Harness, comfy_nodes: Comfy0364, tmp_path: Path
) -> None:
    clip = natural_clip(tmp_path / "clip.mp4", audio=True)
    wf = graph("placeholder.mp4", audio=True, worker_prefix=None, stock_prefix="task/video")
    inputs = [{"base64": base64.b64encode(clip.read_bytes()).decode(), "filename": "clip.mp4", "node_id": "1",
               "field": "file"}]  # fmt: skip
    output_dir = comfy_nodes.workdir / "output"

    def handovers() -> set[Path]:
        return {p for p in output_dir.rglob("*") if p.suffix in (".cwframes", ".cwaudio")}

    before = handovers()  # another test's, left by a bare client
    settings = harness64_nodes.settings(COMFY_OUTPUT_DIR=str(output_dir))
    await harness64_nodes.start_daemon("cw-encode-1", settings=settings)
    worker_task = await harness64_nodes.submit(wf, inputs=inputs)
    done = await wait_task(harness64_nodes.store, worker_task, timeout=120)
    assert done.status == "complete", done.error
    assert done.result["video_encode"] == "worker"
    [out] = done.result["outputs"]
    assert (out["node_id"], out["kind"], out["content_type"]) == ("4", "video", "video/mp4")
    stored = harness64_nodes.storage_dir / out["storage_path"]
    v = stream(probe(stored), "video")
    assert v is not None and (v["codec_name"], v["pix_fmt"], int(v["nb_read_frames"])) == ("h264", "yuv420p", FRAMES)
    assert stream(probe(stored), "audio") is not None
    assert done.output_url == out["url"]
    prompt = json.loads(probe(stored)["format"]["tags"]["prompt"])  # the graph ComfyUI ran, embedded by the worker
    assert prompt["4"]["class_type"] == NODE
    assert handovers() == before  # the task's own were removed from ComfyUI's output folder after it


async def _stock_task(h: Harness, tmp_path: Path, worker_id: str, **env: str) -> Any:
    clip = natural_clip(tmp_path / "clip.mp4", audio=False)
    wf = graph("placeholder.mp4", audio=False, worker_prefix=None, stock_prefix="task/stock")
    inputs = [{"base64": base64.b64encode(clip.read_bytes()).decode(), "filename": "clip.mp4", "node_id": "1",
               "field": "file"}]  # fmt: skip
    await h.start_daemon(worker_id, settings=h.settings(**env))
    done = await wait_task(h.store, await h.submit(wf, inputs=inputs), timeout=120)
    assert done.status == "complete", done.error
    [out] = done.result["outputs"]
    assert out["filename"].endswith(".mp4") and out["kind"] == "video"
    prompt = json.loads(probe(h.storage_dir / out["storage_path"])["format"]["tags"]["prompt"])
    assert prompt["4"]["class_type"] == "SaveVideo"  # ComfyUI encoded it
    return done


async def test_video_encode_comfyui_keeps_savevideo(harness64_nodes: Harness, tmp_path: Path) -> None:
    done = await _stock_task(harness64_nodes, tmp_path, "cw-encode-2", VIDEO_ENCODE="comfyui")
    assert done.result["video_encode"] == "comfyui"


async def test_a_server_without_the_node_keeps_savevideo(harness64: Harness, tmp_path: Path) -> None:
    """The session's ComfyUI 0.3.64 does not load the worker's node folder (an attached server without it)."""
    done = await _stock_task(harness64, tmp_path, "cw-encode-3")
    assert done.result["video_encode"] == "comfyui"


def test_the_hand_over_writes_savevideos_bytes_chunk_by_chunk(tmp_path: Path) -> None:
    """``_write_frames`` (reused buffers) against SaveVideo's own expression, in ComfyUI 0.3.64's python with torch:
    values outside [0, 1], a last chunk shorter than the others, float16 frames."""
    python, tree = comfy_0364_paths()
    if not comfy_0364_available():
        pytest.skip("ComfyUI 0.3.64 not installed")
    script = f"""
import importlib.util, io, sys, torch
sys.path.insert(0, {str(tree)!r})
spec = importlib.util.spec_from_file_location("cw_video", {str(NODES_DIR / "comfy_worker_nodes" / "video.py")!r})
video = importlib.util.module_from_spec(spec); spec.loader.exec_module(video)
for dtype in (torch.float32, torch.float16):
    images = (torch.rand(19, 7, 5, 3) * 2 - 0.5).to(dtype)
    fh = io.BytesIO()
    video._write_frames(fh, images)
    expected = b"".join((f * 255).clamp(0, 255).byte().cpu().numpy().tobytes() for f in images)  # SaveVideo's
    print(dtype, fh.getvalue() == expected, len(expected))
"""
    out = subprocess.run([str(python), "-c", script], capture_output=True, text=True, cwd=tree, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["torch.float32", "True", "1995", "torch.float16", "True", "1995"]
