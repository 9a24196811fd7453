"""The s2v handler's audio length, read by the real ffprobe: a length, a clear error for a file it cannot read,
and a clear error (not a FileNotFoundError) on a worker without ffprobe."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from comfy_worker.errors import ExecutionFailed, InputRejected
from comfy_worker.handlers.wan import audio_seconds


@pytest.fixture
def tone(tmp_path: Path) -> Path:
    path = tmp_path / "tone.wav"
    subprocess.run(
        ["ffmpeg", "-y", "-loglevel", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=1.5", str(path)],
        check=True,
    )
    return path


async def test_the_length_of_an_audio_file(tone: Path) -> None:
    assert await audio_seconds(tone) == pytest.approx(1.5, abs=0.01)


async def test_a_file_ffprobe_cannot_read_is_the_tasks_input_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio")
    with pytest.raises(InputRejected, match=r"params\.audio: cannot read the length of junk\.wav") as info:
        await audio_seconds(junk)
    assert info.value.details == {"field": "audio"}


async def test_a_worker_without_ffprobe_says_so(tone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ExecutionFailed, match="ffprobe not found on PATH") as info:
        await audio_seconds(tone)
    assert info.value.details == {"tool": "ffprobe"} and not info.value.retryable
