"""ffprobe's view of a media file for tests: every stream and the container, frames counted."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any


def probe(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-show_format", "-of", "json", str(path)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def stream(info: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The first stream of ``kind`` (video, audio), or None."""
    return next((s for s in info["streams"] if s["codec_type"] == kind), None)
