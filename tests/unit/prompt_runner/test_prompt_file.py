from __future__ import annotations

import pytest

from comfy_worker.errors import InputRejected, Permanent
from comfy_worker.handlers.prompt_runner.prompt_file import (
    PromptFileError,
    find_prompt_files,
    from_params,
    parse_file,
    parse_text,
)

from .conftest import PROMPT_FILES

GOOD = "sunset\n\n500\n\nline one,\nline two\n\nblurry\nugly\n"


def test_parses_the_fixture_files():
    spec = parse_file(PROMPT_FILES / "sunset_beach.txt")
    assert spec.video_name == "sunset_beach"
    assert spec.total_frames == 500
    assert spec.positive_prompt.startswith("A beautiful sunset over the ocean")
    assert spec.positive_prompt.endswith("highly detailed")
    assert "\n" in spec.positive_prompt  # both lines kept
    assert spec.negative_prompt == "blurry, low quality, distorted, watermark"
    assert spec.frames_per_chunk is None  # the file sets none: the profile's default applies when planning
    city = parse_file(PROMPT_FILES / "city_rain.txt")
    assert (city.video_name, city.total_frames) == ("city_rain", 150)
    assert [p.name for p in find_prompt_files(PROMPT_FILES)] == ["city_rain.txt", "sunset_beach.txt"]


def test_multi_line_sections_and_crlf():
    spec = parse_text(GOOD.replace("\n", "\r\n"), source="x.txt")
    assert spec.positive_prompt == "line one,\nline two"
    assert spec.negative_prompt == "blurry\nugly"


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("sunset\n\n500\n\npositive only\n", 5, "missing section: negative prompt"),
        ("sunset\n\n500\n", 3, "missing section: positive prompt"),
        ("", 1, "missing section: video name"),
        ("sunset\n\nfive hundred\n\np\n\nn\n", 3, "positive integer"),
        ("sunset\n\n0\n\np\n\nn\n", 3, "positive integer"),
        ("sunset\n\n-3\n\np\n\nn\n", 3, "positive integer"),
        ("sunset\n\n12.5\n\np\n\nn\n", 3, "positive integer"),
        ("../etc\n\n5\n\np\n\nn\n", 1, "path separator"),
        ("..\n\n5\n\np\n\nn\n", 1, ".."),
        ("a\x07b\n\n5\n\np\n\nn\n", 1, "control characters"),
        ("sunset\n\n5\n\np\n\nn\n\nextra\n", 9, "fifth section"),
        ("sunset\n\n500\n600\n\np\n\nn\n", 4, "only 'key: value' settings"),
        ("sunset\n\n500\nframes: 81\n\np\n\nn\n", 4, "(frames_per_chunk)"),
        ("sunset\n\n500\nframes_per_chunk: 0\n\np\n\nn\n", 4, "frames_per_chunk must be a positive integer"),
        ("sunset\n\n500\nframes_per_chunk: 81\nframes_per_chunk: 49\n\np\n\nn\n", 5, "set twice"),
    ],
)
def test_errors_name_file_line_and_problem(text, line, words):
    with pytest.raises(PromptFileError) as info:
        parse_text(text, source="prompts/bad.txt")
    err = info.value
    assert isinstance(err, InputRejected) and isinstance(err, Permanent)
    assert err.line == line
    assert str(err).startswith(f"prompts/bad.txt, line {line}: ")
    assert words in str(err)


def test_a_prompt_file_may_set_frames_per_chunk_after_the_total():
    spec = parse_text("sunset\n\n500\nframes_per_chunk: 81\n\npos\n\nneg\n", source="x.txt")
    assert (spec.total_frames, spec.frames_per_chunk) == (500, 81)
    assert parse_text(GOOD, frames_per_chunk=49).frames_per_chunk == 49  # the caller's value when the file has none
    text = "sunset\n\n500\nframes_per_chunk: 81\n\npos\n\nneg\n"
    assert parse_text(text, frames_per_chunk=49).frames_per_chunk == 81  # the file's own wins over the caller's


def test_missing_file_is_named(tmp_path):
    with pytest.raises(PromptFileError, match=r"nope\.txt: file not found"):
        parse_file(tmp_path / "nope.txt")


def test_from_params_defaults_and_values():
    spec = from_params(
        {"video_name": "v1", "total_frames": "300", "positive_prompt": " hello ", "seed": 7,
         "input_video": "in.mp4", "overrides": {"x": 1}}
    )  # fmt: skip
    assert spec.total_frames == 300 and spec.frames_per_chunk is None  # profile default when planning
    assert spec.positive_prompt == "hello" and spec.negative_prompt == ""
    assert spec.seed == 7 and spec.input_video == "in.mp4" and spec.overrides == {"x": 1}


def _params(spec):
    d = spec.to_dict()
    d.pop("source")
    return d


def test_from_params_round_trips():
    spec = from_params({"video_name": "v1", "total_frames": 300, "positive_prompt": "p", "frames_per_chunk": 49})
    assert from_params(_params(spec)) == spec


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"total_frames": 5, "positive_prompt": "p"}, "video_name"),
        ({"video_name": "a/b", "total_frames": 5, "positive_prompt": "p"}, "video_name"),
        ({"video_name": "", "total_frames": 5, "positive_prompt": "p"}, "video_name"),
        ({"video_name": "v", "total_frames": 0, "positive_prompt": "p"}, "total_frames"),
        ({"video_name": "v", "total_frames": True, "positive_prompt": "p"}, "total_frames"),
        ({"video_name": "v", "total_frames": 5, "positive_prompt": "   "}, "positive_prompt"),
        ({"video_name": "v", "total_frames": 5, "positive_prompt": "p", "frames_per_chunk": -1}, "frames_per_chunk"),
        ({"video_name": "v", "total_frames": 5, "positive_prompt": "p", "seed": "x"}, "seed"),
        ({"video_name": "v", "total_frames": 5, "positive_prompt": "p", "overrides": []}, "overrides"),
        ({"video_name": "v", "total_frames": 5, "positive_prompt": "p", "colour": 1}, "colour"),
    ],
)
def test_from_params_errors_name_the_field(params, field):
    with pytest.raises(PromptFileError) as info:
        from_params(params)
    assert info.value.field == field
    assert f"field {field!r}" in str(info.value)
