"""Prompt files and ``prompt_runner`` task params → one :class:`PromptSpec`.

The documented prompt-file format is four sections separated by blank lines::

    sunset_beach                       ← video name (one line, safe as a path component)

    500                                ← total frames (a positive integer)

    A beautiful sunset over the ocean  ← positive prompt, one or more lines
    golden hour lighting, cinematic

    blurry, low quality                ← negative prompt, one or more lines

The total-frames section may carry settings on the lines after the total, one ``key: value`` a line; the only
key is ``frames_per_chunk`` (``500`` then ``frames_per_chunk: 81``). A prompt file's ``frames_per_chunk``
wins over the profile's default and loses to ``--frames-per-chunk``; without one it is None here and the
profile's ``defaults.frames_per_chunk`` (else :data:`DEFAULT_FRAMES_PER_CHUNK`) applies when planning.

Every error is a :class:`PromptFileError` (an :class:`~comfy_worker.errors.InputRejected`, so a task built
from a bad file fails at once) whose message names the file, the line and the problem.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from comfy_worker.errors import InputRejected

DEFAULT_FRAMES_PER_CHUNK = 101  # built-in: used when neither flag, prompt file, task params nor profile set one
FILE_SETTINGS = ("frames_per_chunk",)  # keys the total-frames section of a prompt file may set
MAX_NAME_LENGTH = 200


class PromptFileError(InputRejected):
    """A prompt file or a prompt_runner params dict that cannot be used; names the file/field and line."""

    def __init__(self, source: str, problem: str, *, line: int | None = None, field: str | None = None) -> None:
        where = source
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {problem}", details={"source": source, "line": line, "field": field})
        self.source = source
        self.line = line
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class PromptSpec:
    """What to render: one video of ``total_frames`` frames from one pair of prompts."""

    video_name: str
    total_frames: int
    positive_prompt: str
    negative_prompt: str
    frames_per_chunk: int | None = None  # None: the profile's default, else DEFAULT_FRAMES_PER_CHUNK
    input_video: str | None = None
    profile: str | None = None
    seed: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    source: str = "<params>"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def name_problem(name: str) -> str | None:
    """Why ``name`` is unsafe as one path component, or None when it is fine."""
    if not name:
        return "video name is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"video name is longer than {MAX_NAME_LENGTH} characters"
    if "/" in name or "\\" in name:
        return f"video name {name!r} contains a path separator; use letters, digits, '-', '_' or '.'"
    if name in (".", "..") or ".." in name:
        return f"video name {name!r} contains '..'; it must not climb out of the output directory"
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        return f"video name {name!r} contains control characters"
    if name != name.strip():
        return f"video name {name!r} starts or ends with whitespace"
    if name.startswith(("-", ".")):
        return f"video name {name!r} must not start with '-' or '.'"
    return None


def _sections(lines: list[str]) -> list[tuple[int, list[str]]]:
    """Group non-blank lines into blank-line separated sections: (first line number, lines)."""
    sections: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start = 0
    for number, raw in enumerate(lines, start=1):
        text = raw.rstrip("\r\n")
        if text.strip():
            if not current:
                start = number
            current.append(text.strip())
        elif current:
            sections.append((start, current))
            current = []
    if current:
        sections.append((start, current))
    return sections


_SECTION_NAMES = ("video name", "total frames", "positive prompt", "negative prompt")


def parse_text(text: str, *, source: str = "<text>", frames_per_chunk: int | None = None) -> PromptSpec:
    """Parse prompt-file content. ``source`` names the file in error messages. ``frames_per_chunk`` is used
    when the file sets none."""
    lines = text.splitlines()
    sections = _sections(lines)
    last_line = max(len(lines), 1)
    if len(sections) < 4:
        missing = _SECTION_NAMES[len(sections)]
        raise PromptFileError(
            source,
            f"missing section: {missing} (expected 4 blank-line separated sections: "
            f"{', '.join(_SECTION_NAMES)}; found {len(sections)})",
            line=last_line,
        )
    if len(sections) > 4:
        extra_line = sections[4][0]
        raise PromptFileError(
            source,
            "unexpected fifth section; the negative prompt must be the last section "
            "(join prompt paragraphs without blank lines)",
            line=extra_line,
        )
    (name_line, name_lines), (frames_line, frames_lines), (pos_line, pos), (_neg_line, neg) = sections
    if len(name_lines) != 1:
        raise PromptFileError(source, "the video name must be a single line", line=name_line + 1)
    video_name = name_lines[0]
    if problem := name_problem(video_name):
        raise PromptFileError(source, problem, line=name_line)
    total = _positive_int(frames_lines[0])
    if total is None:
        raise PromptFileError(
            source, f"total frames must be a positive integer, got {frames_lines[0]!r}", line=frames_line
        )
    settings = _file_settings(source, frames_lines[1:], frames_line + 1)
    if settings.get("frames_per_chunk") is not None:
        frames_per_chunk = settings["frames_per_chunk"]
    del pos_line
    return PromptSpec(
        video_name=video_name,
        total_frames=total,
        positive_prompt="\n".join(pos),
        negative_prompt="\n".join(neg),
        frames_per_chunk=frames_per_chunk,
        source=source,
    )


def _file_settings(source: str, lines: list[str], first_line: int) -> dict[str, int]:
    """``key: value`` lines after the total frames (only :data:`FILE_SETTINGS` keys, positive integers)."""
    values: dict[str, int] = {}
    for number, text in enumerate(lines, start=first_line):
        key, sep, raw = text.partition(":")
        key = key.strip()
        if not sep or key not in FILE_SETTINGS:
            raise PromptFileError(
                source,
                f"after the total frames only 'key: value' settings may follow ({', '.join(FILE_SETTINGS)}), "
                f"got {text!r}; put a blank line before the positive prompt",
                line=number,
            )
        if key in values:
            raise PromptFileError(source, f"{key} is set twice", line=number)
        value = _positive_int(raw)
        if value is None:
            raise PromptFileError(source, f"{key} must be a positive integer, got {raw.strip()!r}", line=number)
        values[key] = value
    return values


def parse_file(path: str | Path, *, frames_per_chunk: int | None = None) -> PromptSpec:
    """Read and parse one prompt file (UTF-8)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptFileError(str(p), "file not found") from None
    except UnicodeDecodeError as exc:
        raise PromptFileError(str(p), f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise PromptFileError(str(p), f"cannot be read: {exc.strerror}") from None
    return parse_text(text, source=str(p), frames_per_chunk=frames_per_chunk)


def _positive_int(raw: Any) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw if raw > 0 else None
    if isinstance(raw, float):
        return int(raw) if raw > 0 and math.isfinite(raw) and raw.is_integer() else None
    if isinstance(raw, str):
        text = raw.strip()
        if text.isascii() and text.isdigit():
            value = int(text)
            return value if value > 0 else None
    return None


_KNOWN_PARAMS = frozenset(
    {
        "video_name",
        "total_frames",
        "positive_prompt",
        "negative_prompt",
        "frames_per_chunk",
        "input_video",
        "profile",
        "seed",
        "overrides",
    }
)


def from_params(params: Mapping[str, Any], *, source: str = "params") -> PromptSpec:
    """Build a spec from ``prompt_runner`` task params; errors name the field and the fix."""
    if not isinstance(params, Mapping):
        raise PromptFileError(source, f"params must be a JSON object, got {type(params).__name__}")

    def fail(name: str, problem: str) -> PromptFileError:
        return PromptFileError(source, problem, field=name)

    unknown = sorted(set(params) - _KNOWN_PARAMS)
    if unknown:
        raise fail(unknown[0], f"unknown parameter; expected some of {', '.join(sorted(_KNOWN_PARAMS))}")
    for required in ("video_name", "total_frames", "positive_prompt"):
        if required not in params or params[required] in (None, ""):
            raise fail(required, "is required")
    name = params["video_name"]
    if not isinstance(name, str):
        raise fail("video_name", f"must be a string, got {type(name).__name__}")
    if problem := name_problem(name):
        raise fail("video_name", problem)
    total = _positive_int(params["total_frames"])
    if total is None:
        raise fail("total_frames", f"must be a positive integer, got {params['total_frames']!r}")
    fpc_raw = params.get("frames_per_chunk")  # absent or null: the profile's default applies when planning
    fpc = None if fpc_raw is None else _positive_int(fpc_raw)
    if fpc_raw is not None and fpc is None:
        raise fail("frames_per_chunk", f"must be a positive integer, got {fpc_raw!r}")
    texts: dict[str, str] = {}
    for key in ("positive_prompt", "negative_prompt"):
        value = params.get(key, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise fail(key, f"must be a string, got {type(value).__name__}")
        texts[key] = value.strip()
    if not texts["positive_prompt"]:
        raise fail("positive_prompt", "is required (non-blank text)")
    optional_str: dict[str, str | None] = {}
    for key in ("input_video", "profile"):
        value = params.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise fail(key, f"must be a non-empty string when given, got {value!r}")
        optional_str[key] = value.strip() if isinstance(value, str) else None
    seed = params.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise fail("seed", f"must be a non-negative integer when given, got {seed!r}")
    overrides = params.get("overrides")
    overrides = {} if overrides is None else overrides
    if not isinstance(overrides, Mapping):
        raise fail("overrides", f"must be a JSON object, got {type(overrides).__name__}")
    return PromptSpec(
        video_name=name,
        total_frames=total,
        positive_prompt=texts["positive_prompt"],
        negative_prompt=texts["negative_prompt"],
        frames_per_chunk=fpc,
        input_video=optional_str["input_video"],
        profile=optional_str["profile"],
        seed=seed,
        overrides=dict(overrides),
        source=source,
    )


def find_prompt_files(directory: str | Path) -> list[Path]:
    """The ``*.txt`` files of a prompt directory, sorted by name."""
    d = Path(directory)
    if not d.is_dir():
        raise PromptFileError(str(d), "prompt directory not found (pass --prompt-dir or --prompt-file)")
    return sorted(p for p in d.glob("*.txt") if p.is_file())
