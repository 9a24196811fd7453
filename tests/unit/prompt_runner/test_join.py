"""join_segments with the real ffmpeg: frame counts exact with and without overlap, in every mode."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from comfy_worker.errors import ExecutionFailed, InputRejected
from comfy_worker.handlers.prompt_runner.join import count_frames, join_segments, probe


def make(path: Path, frames: int, *, size: str = "128x128", rate: int = 30, codec: str = "libx264", start: int = 0):
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}", "-ss", str(start),
         "-frames:v", str(frames), "-c:v", codec, "-pix_fmt", "yuv420p", str(path)],
        check=True, timeout=120,
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def segments(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("segments")
    return [make(d / f"seg{i}.mp4", n, start=i) for i, n in enumerate((25, 25, 17))]


async def test_stream_copy_without_overlap(segments, tmp_path):
    result = await join_segments(segments, tmp_path / "out.mp4")
    assert result.mode == "copy"
    assert result.frames == result.expected_frames == 67
    assert await count_frames(tmp_path / "out.mp4", decode=True) == 67


@pytest.mark.parametrize("overlap", [1, 4])
async def test_overlap_trimmed_with_one_reencode(segments, tmp_path, overlap):
    result = await join_segments(segments, tmp_path / "out.mp4", overlap=overlap)
    assert result.mode == "reencode"
    assert await count_frames(tmp_path / "out.mp4", decode=True) == 67 - 2 * overlap


async def test_mismatched_codecs_are_reencoded_to_the_first_format(segments, tmp_path):
    odd = make(tmp_path / "odd.mp4", 20, size="96x64", rate=25, codec="mpeg4")
    out = tmp_path / "out.mp4"
    result = await join_segments([segments[0], odd, segments[2]], out, overlap=2)
    assert result.mode == "reencode"
    info = await probe(out, decode=True)
    assert (info.frames, info.width, info.height, info.codec) == (25 + 18 + 15, 128, 128, "h264")
    result = await join_segments([segments[0], odd], tmp_path / "out2.mp4")
    assert result.mode == "reencode" and await count_frames(tmp_path / "out2.mp4", decode=True) == 45


async def test_single_segment_and_errors(segments, tmp_path):
    assert (await join_segments(segments[:1], tmp_path / "one.mp4")).frames == 25
    with pytest.raises(InputRejected, match="at least one"):
        await join_segments([], tmp_path / "x.mp4")
    with pytest.raises(InputRejected, match=r"missing\.mp4: file not found"):
        await join_segments([segments[0], tmp_path / "missing.mp4"], tmp_path / "x.mp4")
    with pytest.raises(InputRejected, match="not more than the overlap"):
        await join_segments(segments, tmp_path / "x.mp4", overlap=17)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    with pytest.raises(ExecutionFailed) as info:
        await join_segments([segments[0], junk], tmp_path / "x.mp4")
    assert info.value.details["tool"] == "ffprobe" and not info.value.retryable
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("force_reencode", [False, True])
async def test_file_names_that_look_like_options_or_protocols_stay_file_names(
    segments, tmp_path, monkeypatch, force_reencode
):
    # relative paths in the current directory whose names ffmpeg would read as an option or a protocol if
    # they reached it as given: every file argument goes absolute, the concat listing is quoted
    monkeypatch.chdir(tmp_path)
    names = ["-y.mp4", "concat:it's here.mp4", "http:x.mp4"]
    for seg, name in zip(segments, names, strict=True):
        Path(name).write_bytes(seg.read_bytes())
    result = await join_segments(names, "-out.mp4", force_reencode=force_reencode)
    assert result.output == tmp_path / "-out.mp4" and result.frames == 67
    assert await count_frames("-out.mp4", decode=True) == 67


async def test_a_line_break_in_a_segment_path_is_refused(segments, tmp_path):
    odd = tmp_path / "a\nfile 'x'.mp4"
    odd.write_bytes(segments[0].read_bytes())
    with pytest.raises(InputRejected, match="line break"):
        await join_segments([segments[0], odd], tmp_path / "x.mp4")


def make_levels(path: Path, segment: int, frames: int, *, size: str = "32x32", codec: str = "libx264") -> Path:
    """A segment whose frame n is flat grey at level 10 + 3·(25·segment + n): every frame says where it came from."""
    lum = f"10+3*(25*{segment}+N)"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"nullsrc=s={size}:r=30,geq=lum='{lum}':cb=128:cr=128",
         "-frames:v", str(frames), "-c:v", codec, "-pix_fmt", "yuv420p", str(path)],
        check=True, timeout=120,
    )  # fmt: skip
    return path


def frame_origins(path: Path) -> list[tuple[int, int]]:
    """(segment, frame) of every frame of ``path``, read back from its grey level."""
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "yuv420p", "-vf", "scale=32:32",
         "-"],
        check=True, capture_output=True, timeout=120,
    ).stdout  # fmt: skip
    luma, frame = 32 * 32, 32 * 32 * 3 // 2  # the Y plane (the level as written), then the chroma planes
    origins = []
    for i in range(0, len(raw), frame):
        level = round((sum(raw[i : i + luma]) / luma - 10) / 3)
        origins.append(divmod(level, 25))
    return origins


@pytest.mark.parametrize("mixed", [False, True])
async def test_keep_ranges_drop_the_overlap_and_the_surplus_frame_exactly(tmp_path, mixed):
    """Each segment contributes exactly frames [skip, skip + count): the chain's overlap at the start and the
    frames a chunk rendered past its share (Wan's 4k+1) at the end; same-format and mixed-format paths."""
    segs = [make_levels(tmp_path / f"s{i}.mp4", i, 9) for i in range(3)]
    if mixed:
        segs[1] = make_levels(tmp_path / "odd.mp4", 1, 9, size="48x32", codec="mpeg4")
    keep = [(0, 9), (2, 7), (2, 6)]  # the plan for 22 frames in chunks of 9, overlap 2: the last spans 8, renders 9
    result = await join_segments(segs, tmp_path / "out.mp4", keep=keep)
    assert result.mode == "reencode" and result.frames == result.expected_frames == 22
    assert await count_frames(tmp_path / "out.mp4", decode=True) == 22
    expected = [(0, n) for n in range(9)] + [(1, n) for n in range(2, 9)] + [(2, n) for n in range(2, 8)]
    assert frame_origins(tmp_path / "out.mp4") == expected


async def test_keep_everything_is_a_stream_copy_and_bad_ranges_are_refused(segments, tmp_path):
    result = await join_segments(segments, tmp_path / "all.mp4", keep=[(0, 25), (0, None), (0, 17)])
    assert result.mode == "copy" and result.frames == 67
    with pytest.raises(InputRejected, match=r"17 frames, fewer than the 18 needed to keep 16 after skipping 2"):
        await join_segments(segments, tmp_path / "x.mp4", keep=[(0, None), (0, None), (2, 16)])
    with pytest.raises(InputRejected, match="2 frame ranges for 3 segments"):
        await join_segments(segments, tmp_path / "x.mp4", keep=[(0, None), (0, None)])
    with pytest.raises(InputRejected, match=r"keep\[1\]: \(0, 0\) is not a frame range"):
        await join_segments(segments, tmp_path / "x.mp4", keep=[(0, None), (0, 0), (0, None)])
    assert not (tmp_path / "x.mp4").exists()
