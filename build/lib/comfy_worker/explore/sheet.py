"""The contact sheet: one self-contained HTML file per batch (``contact_sheet.html`` in the batch directory).

The page carries its data inline (no server, no CDN): thumbnails with parameter overlays, sort by any parameter,
filter by ranges (numbers) or values (everything else), click to play the full video. Paths are relative to
the batch directory, so it works from ``file://`` and over HTTP alike; ``--inline`` also embeds the thumbnails
(data URIs) so the HTML alone can be sent around. While a batch runs, the batch rewrites the sheet after every
run and the page offers to reload itself every 10 s (sort and filters survive in the URL's fragment).
"""

from __future__ import annotations

import base64
import json
import mimetypes
from importlib import resources
from pathlib import Path
from typing import Any

from comfy_worker.errors import InputRejected
from comfy_worker.explore import media
from comfy_worker.explore.fs import write_atomic

SHEET_NAME = "contact_sheet.html"
REFRESH_S = 10.0


def read_state(directory: Path) -> dict[str, Any]:
    path = directory / "progress.json"
    if not path.is_file():
        raise InputRejected(f"{directory} is not a batch directory (no progress.json); give the "
                            "output/batch_<timestamp> directory a `comfy-worker batch` made")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise InputRejected(f"{path} is not valid JSON ({exc})") from exc


def sheet_data(directory: Path, state: dict[str, Any], *, inline: bool = False,
               refresh_s: float = REFRESH_S) -> dict[str, Any]:
    runs = []
    for run_id, entry in sorted(state.get("runs", {}).items(), key=lambda kv: int(kv[0])):
        thumb = entry.get("thumbnail")
        row = {
            "run_id": int(run_id),
            "name": entry.get("name"),
            "values": entry.get("values") or {},
            "status": entry.get("status"),
            "seconds": entry.get("seconds"),
            "outputs": entry.get("outputs") or [],
            "thumbnail": thumb,
            "error": entry.get("error"),
        }
        if inline and thumb and (directory / thumb).is_file():
            encoded = base64.b64encode((directory / thumb).read_bytes()).decode()
            ctype = mimetypes.guess_type(thumb)[0] or "image/jpeg"
            row["thumbnail_data"] = f"data:{ctype};base64,{encoded}"
        runs.append(row)
    return {
        "title": directory.name,
        "strategy": state.get("strategy"),
        "mode": state.get("mode"),
        "state": state.get("state"),
        "parameters": state.get("parameters") or [],
        "refresh_s": refresh_s,
        "runs": runs,
    }


def render(data: dict[str, Any]) -> str:
    template = resources.files("comfy_worker.explore").joinpath("sheet.html").read_text()
    payload = json.dumps(data, default=str).replace("</", "<\\/")
    title = str(data["title"]).replace("&", "&amp;").replace("<", "&lt;")
    return template.replace("__TITLE__", title).replace("__DATA__", payload)


def write_sheet(directory: Path, *, inline: bool = False, state: dict[str, Any] | None = None,
                refresh_s: float = REFRESH_S) -> Path:
    state = state if state is not None else read_state(directory)
    path = directory / SHEET_NAME
    write_atomic(path, render(sheet_data(directory, state, inline=inline, refresh_s=refresh_s)))
    return path


async def make_sheet(directory: Path, *, inline: bool = False) -> Path:
    """``comfy-worker contact-sheet``: make thumbnails a batch lacks (ffmpeg), then write the sheet. ``inline``
    makes small JPEG thumbnails for images that were their own thumbnails, so the HTML stays small."""
    state = read_state(directory)
    for entry in state.get("runs", {}).values():
        thumb = entry.get("thumbnail")
        if thumb and (directory / thumb).is_file() and (not inline or thumb.startswith("thumbnails/")):
            continue
        src = media.thumbnail_source([directory / o for o in entry.get("outputs") or []])
        if src is not None and src.is_file():
            made = await media.thumbnail(src, directory / "thumbnails" / f"{entry.get('name')}.jpg")
            entry["thumbnail"] = str(made.relative_to(directory)) if made else None
    return write_sheet(directory, inline=inline, state=state)
