"""engine/frames.py on its own: which SaveVideo nodes are swapped, the hand-over file's header checks, the ffmpeg
encode (real ffmpeg: frames, frame rate, audio, metadata with characters ffmpeg's metadata format escapes), its
failure and cancellation; and the setting reaching the supervisor's command line."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfy_worker.config import load_settings
from comfy_worker.engine import frames
from comfy_worker.engine.frames import (
    AUDIO_EXT,
    FRAMES_EXT,
    MAGIC,
    NODE,
    NODES_DIR,
    encode_handover,
    encode_handovers,
    read_header,
    swap_save_video,
)
from comfy_worker.engine.outputs import OutputItem
from comfy_worker.engine.supervisor import ComfySupervisor
from comfy_worker.errors import ConfigError, EngineUnavailable
from tests.media_probe import probe, stream

OBJECT_INFO: dict[str, Any] = {"SaveVideo": {}, NODE: {}, "CreateVideo": {}}


def save(fmt: str = "auto", codec: str = "auto") -> dict[str, Any]:
    return {"class_type": "SaveVideo", "inputs": {"video": ["3", 0], "filename_prefix": "v", "format": fmt,
                                                  "codec": codec}}  # fmt: skip


def test_swaps_every_savevideo_it_can_encode_and_nothing_else() -> None:
    wf = {"3": {"class_type": "CreateVideo", "inputs": {}}, "4": save(), "5": save("mp4", "h264"),
          "6": save("webm", "vp9"), "7": {"class_type": "SaveImage", "inputs": {}}}  # fmt: skip
    assert swap_save_video(wf, OBJECT_INFO) == ["4", "5"]
    assert [wf[k]["class_type"] for k in ("3", "4", "5", "6", "7")] == [
        "CreateVideo", NODE, NODE, "SaveVideo", "SaveImage"
    ]
    assert wf["4"]["inputs"] == save()["inputs"]  # the same inputs: the node takes SaveVideo's


def test_keeps_savevideo_without_the_node_or_ffmpeg(monkeypatch: pytest.MonkeyPatch) -> None:
    wf = {"4": save()}
    assert swap_save_video(wf, {"SaveVideo": {}}) == [] and wf["4"]["class_type"] == "SaveVideo"
    monkeypatch.setattr(frames, "ffmpeg_path", lambda: None)
    assert swap_save_video(wf, OBJECT_INFO) == [] and wf["4"]["class_type"] == "SaveVideo"


def write_handover(
    folder: Path, w: int, h: int, n: int, *, fps: tuple[int, int] = (16, 1), audio_s: float | None = None,
    metadata: dict[str, str] | None = None, pattern: str = "gradient",
) -> tuple[OutputItem, OutputItem | None]:
    """A hand-over file as ComfyWorkerSaveVideo writes it (comfy_nodes/comfy_worker_nodes/video.py), rgb24 frames."""
    folder.mkdir(parents=True, exist_ok=True)
    audio = None
    sound_item = None
    if audio_s is not None:
        rate = 8000
        samples = int(rate * audio_s)
        sound = folder / f"v_00001_{AUDIO_EXT}"
        data = b"".join(struct.pack("<ff", 0.1 * ((i % 40) / 20 - 1), 0.0) for i in range(samples))
        sound.write_bytes(data)
        audio = {"file": sound.name, "sample_rate": rate, "channels": 2, "sample_fmt": "f32le"}
        sound_item = item(sound)
    head = {"version": 1, "width": w, "height": h, "frames": n, "fps": list(fps), "pix_fmt": "rgb24",
            "format": "auto", "codec": "auto", "output": "v_00001_.mp4", "audio": audio,
            "metadata": metadata or {}}  # fmt: skip
    blob = json.dumps(head).encode()
    path = folder / f"v_00001_{FRAMES_EXT}"
    with path.open("wb") as fh:
        fh.write(MAGIC + struct.pack("<Q", len(blob)) + blob)
        for k in range(n):
            if pattern == "noise":
                fh.write(os.urandom(w * h * 3))
            else:
                fh.write(bytes(((x // 3) % w + k * 8) % 256 for x in range(w * h * 3)))
    return item(path), sound_item


def item(path: Path) -> OutputItem:
    return OutputItem("9", "other", path.name, "sub", "output", path, path.stat().st_size, "", "")


async def test_encodes_frames_rate_audio_and_metadata(tmp_path: Path) -> None:
    meta = {"prompt": json.dumps({"1": {"text": "a=b; c#d \\ e\nnext line, ünïcode"}}), "workflow": "{}"}
    frames_item, sound = write_handover(tmp_path, 64, 48, 10, fps=(24000, 1001), audio_s=0.5, metadata=meta)
    [video] = await encode_handovers([frames_item, *([sound] if sound else [])])
    assert (video.node_id, video.kind, video.filename, video.subfolder, video.content_type) == (
        "9", "video", "v_00001_.mp4", "sub", "video/mp4"
    )
    info = probe(video.path)
    v, a = stream(info, "video"), stream(info, "audio")
    assert v is not None and a is not None
    assert (v["codec_name"], v["pix_fmt"], v["width"], v["height"], int(v["nb_read_frames"]), v["r_frame_rate"]) == (
        "h264", "yuv420p", 64, 48, 10, "24000/1001"
    )
    assert (a["codec_name"], int(a["sample_rate"]), a["channels"]) == ("aac", 8000, 2)
    assert info["format"]["tags"]["prompt"] == meta["prompt"]  # escaped into ffmpeg's format and back, exactly
    assert video.bytes == video.path.stat().st_size and len(video.sha256) == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v_00001_.mp4"]  # hand-over files removed


async def test_a_header_that_does_not_match_the_file_is_refused(tmp_path: Path) -> None:
    frames_item, _ = write_handover(tmp_path, 16, 16, 3)
    with frames_item.path.open("r+b") as fh:
        fh.truncate(frames_item.bytes - 5)
    with pytest.raises(EngineUnavailable, match=r"v_00001_\.cwframes cannot be read: .*bytes where the header"):
        read_header(frames_item.path)
    frames_item.path.write_bytes(b"not a hand-over")
    with pytest.raises(EngineUnavailable, match="cannot be read: not a hand-over file"):
        await encode_handover(frames_item, None)


async def test_missing_audio_and_an_ffmpeg_failure_are_explained(tmp_path: Path) -> None:
    frames_item, sound = write_handover(tmp_path / "a", 16, 16, 2, audio_s=0.2)
    with pytest.raises(EngineUnavailable, match="names audio it did not list"):
        await encode_handover(frames_item, None)
    frames_item, sound = write_handover(tmp_path / "b", 16, 16, 2, audio_s=0.2)
    assert sound is not None
    sound.path.unlink()  # ffmpeg cannot open it
    with pytest.raises(EngineUnavailable, match=r"encoding v_00001_\.mp4 with ffmpeg failed \(exit \d+\): .*cwaudio"):
        await encode_handover(frames_item, sound)
    assert not (tmp_path / "b" / "v_00001_.mp4").exists() and not frames_item.path.exists()


async def test_cancelling_the_encode_stops_ffmpeg_and_removes_the_files(tmp_path: Path) -> None:
    frames_item, _ = write_handover(tmp_path, 320, 240, 400, pattern="noise")  # seconds of x264 work on noise
    task = asyncio.ensure_future(encode_handover(frames_item, None))
    out = tmp_path / "v_00001_.mp4"
    while not out.exists():  # ffmpeg opens its output once it runs
        assert not task.done(), task
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    ps = subprocess.run(["pgrep", "-f", str(frames_item.path)], capture_output=True, text=True)
    assert ps.stdout.strip() == ""  # no ffmpeg left reading the hand-over
    assert not frames_item.path.exists()


def test_the_supervisor_loads_the_node_folder_only_when_the_worker_encodes_or_freezes(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("")
    base = {"COMFY_PATH": str(tmp_path), "COMFY_PYTHON": sys.executable, "COMFY_ARGS": "--lowvram"}
    argv, _ = ComfySupervisor(load_settings(base)).command()
    i = argv.index("--extra-model-paths-config")
    assert argv[-1] == "--lowvram"
    paths = yaml.safe_load(Path(argv[i + 1]).read_text())
    assert paths == {"comfy_worker": {"custom_nodes": str(NODES_DIR)}} and NODES_DIR.is_absolute()
    assert (NODES_DIR / "comfy_worker_nodes" / "__init__.py").is_file()
    sup = ComfySupervisor(load_settings({**base, "VIDEO_ENCODE": "comfyui"}))
    assert "--extra-model-paths-config" not in sup.command()[0] and sup.child_env() is None
    sup = ComfySupervisor(load_settings({**base, "VIDEO_ENCODE": "comfyui", "COMFY_GC_FREEZE": "true"}))
    assert "--extra-model-paths-config" in sup.command()[0]  # the freezer lives in the same package
    env = sup.child_env()
    assert env is not None and env["COMFY_WORKER_GC_FREEZE"] == "1" and env["PATH"] == os.environ["PATH"]


def test_video_encode_names_its_choices() -> None:
    with pytest.raises(ConfigError, match=r"VIDEO_ENCODE.*worker, comfyui"):
        load_settings({"VIDEO_ENCODE": "gpu"})
