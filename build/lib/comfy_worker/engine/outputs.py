"""Output files of a finished prompt: list every item of every output node, stream each via ``/view``.

History ``outputs`` look like ``{node_id: {"images": [{filename, subfolder, type}], "animated": [true],
"gifs": [...], "audio": [...], "latents": [...], ...}}``. Every list of dicts with a ``filename`` is an output
item, whatever its key; the key and the file extension decide its kind.
"""

from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import httpx

from comfy_worker.errors import EngineUnavailable, OutputMissing

VIDEO_EXT = frozenset({".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v"})
IMAGE_EXT = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
AUDIO_EXT = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac"})
LATENT_EXT = frozenset({".latent"})
_EXTRA_TYPES = {
    ".latent": "application/octet-stream",
    ".webp": "image/webp",
    ".opus": "audio/opus",
    ".flac": "audio/flac",
    ".mkv": "video/x-matroska",
    ".webm": "video/webm",
}
CHUNK = 1 << 20


@dataclass(frozen=True)
class OutputItem:
    node_id: str
    kind: str  # image | video | audio | latent | other
    filename: str
    subfolder: str
    type: str  # output | temp | input
    path: Path
    bytes: int
    sha256: str
    content_type: str


@dataclass(frozen=True)
class OutputRef:
    """An output item as the history lists it, before download."""

    node_id: str
    key: str
    kind: str
    filename: str
    subfolder: str
    type: str


def kind_of(key: str, filename: str) -> str:
    ext = PurePosixPath(filename).suffix.lower()
    if key == "latents" or ext in LATENT_EXT:
        return "latent"
    if key == "audio" or ext in AUDIO_EXT:
        return "audio"
    if ext in VIDEO_EXT:
        return "video"
    if ext in IMAGE_EXT:
        return "image"
    return "other"


def content_type_of(filename: str) -> str:
    ext = PurePosixPath(filename).suffix.lower()
    return _EXTRA_TYPES.get(ext) or mimetypes.guess_type(filename)[0] or "application/octet-stream"


def list_outputs(outputs: dict[str, Any], *, include_temp: bool = False) -> list[OutputRef]:
    """Every file item of every output node, in node order; ``type: temp`` skipped unless asked."""
    refs: list[OutputRef] = []
    for node_id, node_out in outputs.items():
        if not isinstance(node_out, dict):
            continue
        for key, items in node_out.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
                    continue
                kind_type = str(item.get("type") or "output")
                if kind_type == "temp" and not include_temp:
                    continue
                refs.append(
                    OutputRef(
                        str(node_id),
                        key,
                        kind_of(key, item["filename"]),
                        item["filename"],
                        str(item.get("subfolder") or ""),
                        kind_type,
                    )
                )
    return refs


def safe_relpath(subfolder: str, filename: str) -> Path:
    parts = [p for p in PurePosixPath(subfolder.replace("\\", "/")).parts if p not in ("", ".", "/")]
    parts.append(PurePosixPath(filename.replace("\\", "/")).name)
    if any(p == ".." for p in parts):
        raise EngineUnavailable(f"ComfyUI listed an output with an unsafe path: {subfolder}/{filename}")
    return Path(*parts)


async def download_outputs(
    http: httpx.AsyncClient,
    base_url: str,
    outputs: dict[str, Any],
    dest_dir: Path,
    *,
    include_temp: bool = False,
    in_place: Callable[[OutputRef], Path | None] | None = None,
) -> list[OutputItem]:
    """Stream each output to ``dest_dir/<type>/<subfolder>/<filename>`` in 1 MiB chunks, hashed on the way. An output
    ``in_place`` finds on this machine's disk is listed where it is instead (not copied, not hashed)."""
    items: list[OutputItem] = []
    seen: set[Path] = set()
    for ref in list_outputs(outputs, include_temp=include_temp):
        path = dest_dir / ref.type / safe_relpath(ref.subfolder, ref.filename)
        if path in seen:
            continue
        seen.add(path)
        local = in_place(ref) if in_place is not None else None
        if local is not None:
            size = local.stat().st_size
            items.append(OutputItem(ref.node_id, ref.kind, ref.filename, ref.subfolder, ref.type, local, size, "",
                                    content_type_of(ref.filename)))  # fmt: skip
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        params = {"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type}
        digest, size = hashlib.sha256(), 0
        try:
            async with http.stream("GET", f"{base_url}/view", params=params) as resp:
                if resp.status_code == 404:
                    raise OutputMissing(
                        f"ComfyUI listed output {ref.subfolder}/{ref.filename} but no longer has it",
                        details={"status": 404, "node_id": ref.node_id, **params},
                    )
                if resp.status_code != 200:
                    raise EngineUnavailable(
                        f"ComfyUI answered {resp.status_code} for output {ref.subfolder}/{ref.filename}",
                        details={"status": resp.status_code, **params},
                    )
                with path.open("wb") as fh:
                    async for chunk in resp.aiter_bytes(CHUNK):
                        fh.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
        except httpx.HTTPError as exc:
            raise EngineUnavailable(
                f"downloading output {ref.filename} from ComfyUI failed ({exc})", details=params
            ) from exc
        items.append(
            OutputItem(
                ref.node_id,
                ref.kind,
                ref.filename,
                ref.subfolder,
                ref.type,
                path,
                size,
                digest.hexdigest(),
                content_type_of(ref.filename),
            )
        )
    return items
