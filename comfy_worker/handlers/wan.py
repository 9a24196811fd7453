"""The ``comfyui_i2v`` / ``comfyui_t2v`` / ``comfyui_ti2v`` / ``comfyui_s2v`` / ``comfyui_flf2v`` tasks: Wan 2.2 from
parameters instead of a whole graph.

contract (:func:`comfy_worker.builders.params.resolve`: unknown keys and out-of-range values fail at once) →
media fetched and uploaded → graph built (:mod:`comfy_worker.builders.wan22`) → the ``comfy`` handler's stages:
validation against the live server (a missing model names its file and ``models/`` folder), queueing, waiting,
outputs to storage. The result adds ``seed`` (the one used, drawn when -1 or absent), ``num_frames`` (after
Wan's 4k+1 rounding), ``notes`` (what was adjusted) and ``params`` (everything the graph was built from).

``comfyui_s2v`` without ``num_frames`` renders as many 77-frame windows as the audio needs (its length measured
with ffprobe, at ``fps``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from comfy_worker.builders import build_resolved, resolve
from comfy_worker.builders.params import MAX_FRAMES, S2V, Resolved
from comfy_worker.errors import InputRejected
from comfy_worker.handlers.base import TaskContext
from comfy_worker.handlers.comfy import ComfyHandler, Prepared, fetch_input, upload_input, validated, video_encode
from comfy_worker.logs import get_logger
from comfy_worker.subproc import find_tool, run_tool

log = get_logger(__name__)


async def audio_seconds(path: Path) -> float:
    """The length of an audio (or video) file in seconds, read with ffprobe."""
    ffprobe = find_tool("ffprobe", what=f"reading the length of params.audio ({path.name})")
    done = await run_tool(
        [ffprobe, "-v", "error", "-show_entries", "format=duration", "-of", "default=nw=1:nk=1", str(path)]
    )
    try:
        seconds = float(done.stdout.decode().strip())
    except ValueError:
        seconds = math.nan
    if done.returncode != 0 or not seconds > 0:
        why = done.stderr.decode(errors="replace").strip()[:200]
        raise InputRejected(
            f"params.audio: cannot read the length of {path.name} ({why}); "
            "give an audio file ffmpeg can read (wav, mp3, flac, m4a, …)",
            details={"field": "audio"},
        )
    return seconds


class WanHandler(ComfyHandler):
    """One ``comfyui_*`` task type (the daemon registers one instance per type); ``submit``, ``execute`` and
    ``finish`` are the ``comfy`` handler's."""

    def __init__(self, task_type: str) -> None:
        self.task_type = task_type

    async def prepare(self, ctx: TaskContext) -> Prepared:
        params = ctx.task.params
        resolved = resolve(self.task_type, params)
        object_info = await ctx.client.object_info()
        names: dict[str, str] = {}
        for key, spec in resolved.media.items():
            path = await fetch_input(ctx, spec, ctx.work_dir / "inputs" / key)
            if key == "audio" and self.task_type == S2V and "num_frames" not in params:
                resolved = await self._frames_from_audio(resolved, params, path)
            names[key] = await upload_input(ctx, path)
            log.info("input_uploaded", field=key, name=names[key], bytes=path.stat().st_size)
        workflow = build_resolved(resolved, names)
        v = resolved.values
        info = {
            "task_type": self.task_type,
            "seed": v["seed"],
            "num_frames": v["num_frames"],
            "notes": resolved.notes,
            "params": v,
        }
        log.info("wan_graph_built", nodes=len(workflow), seed=v["seed"], num_frames=v["num_frames"])
        return validated(workflow, object_info, video_encode(ctx, workflow, object_info, info))

    async def _frames_from_audio(self, resolved: Resolved, params: dict[str, Any], path: Path) -> Resolved:
        seconds = await audio_seconds(path)
        fps = resolved.values["fps"]
        frames = min(MAX_FRAMES, max(1, math.ceil(seconds * fps)))
        again = resolve(self.task_type, {**params, "num_frames": frames, "seed": resolved.values["seed"]})
        note = f"num_frames from the audio's length ({seconds:.2f} s at {fps:g} fps)"
        if frames == MAX_FRAMES and seconds * fps > MAX_FRAMES:
            note += f"; capped at {MAX_FRAMES} frames"
        drawn = [n for n in resolved.notes if n.startswith("seed drawn")]
        return Resolved(again.task_type, again.values, again.media, [note, *again.notes, *drawn])
