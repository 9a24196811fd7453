"""ComfyWorkerSaveVideo: SaveVideo's inputs, but the frames are handed to the worker instead of encoded here.

Runs in ComfyUI (the package's ``__init__`` registers it; never imported by comfy_worker). The worker swaps a task's
stock ``SaveVideo`` for this node when VIDEO_ENCODE=worker and the server lists it, then encodes the file with
ffmpeg while ComfyUI runs the next prompt (comfy_worker/engine/frames.py reads it; the format is defined there and
mirrored here).

Per video, in ComfyUI's output folder under SaveVideo's name ``<prefix>_<counter>_``:
- ``<name>.cwframes``: ``CWFRAMES1\\n``, an 8-byte little-endian header length, the JSON header, then the frames as
  raw rgb24 (``(x * 255).clamp(0, 255).byte()``: the bytes SaveVideo hands its encoder);
- ``<name>.cwaudio``: the audio as interleaved float32 little-endian, cut to the frames' length as SaveVideo cuts
  it (only when the video has audio).
The history lists both under ``comfy_worker_frames``.
"""

from __future__ import annotations

import json
import math
import os
import struct
from fractions import Fraction
from typing import BinaryIO

import folder_paths  # ComfyUI's
import torch

MAGIC = b"CWFRAMES1\n"
FRAMES_EXT = ".cwframes"
AUDIO_EXT = ".cwaudio"
CHUNK_FRAMES = 8  # frames converted to bytes at a time: bounded memory for long videos


def _write_frames(fh: BinaryIO, images: torch.Tensor) -> None:
    """SaveVideo's bytes, ``(x * 255).clamp(0, 255).byte()``, CHUNK_FRAMES at a time through two buffers reused for
    every chunk: fresh temporaries per chunk cost 3-5x the time (page faults on ~90-MB allocations)."""
    first = images[:CHUNK_FRAMES].cpu()
    scratch = first.new_empty(first.shape)
    out = first.new_empty(first.shape, dtype=torch.uint8)
    for start in range(0, int(images.shape[0]), CHUNK_FRAMES):
        part = images[start : start + CHUNK_FRAMES].cpu()
        n = int(part.shape[0])
        buf, u8 = scratch[:n], out[:n]
        buf.copy_(part).mul_(255).clamp_(0, 255)  # as SaveVideo: scale, clamp, then truncate to uint8
        u8.copy_(buf)
        fh.write(u8.numpy())


def _disable_metadata() -> bool:
    try:
        from comfy.cli_args import args

        return bool(args.disable_metadata)
    except Exception:  # an older ComfyUI without the flag: keep the metadata
        return False


class ComfyWorkerSaveVideo:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "video": ("VIDEO", {"tooltip": "The video to save."}),
                "filename_prefix": ("STRING", {"default": "video/ComfyUI"}),
                "format": (["auto", "mp4"], {"default": "auto"}),
                "codec": (["auto", "h264"], {"default": "auto"}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "image/video"
    DESCRIPTION = "SaveVideo for comfy-worker: hands the frames to the worker, which encodes them (h264, yuv420p)."

    def save(self, video, filename_prefix, format="auto", codec="auto", prompt=None, extra_pnginfo=None):
        components = video.get_components()
        images = components.images
        frames, height, width = int(images.shape[0]), int(images.shape[1]), int(images.shape[2])
        full_output_folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), width, height
        )
        metadata = {}
        if not _disable_metadata():
            if extra_pnginfo is not None:
                metadata.update(extra_pnginfo)
            if prompt is not None:
                metadata["prompt"] = prompt
        name = f"{filename}_{counter:05}_"
        rate = Fraction(round(float(components.frame_rate) * 1000), 1000)  # as SaveVideo rounds it
        audio = None
        items = []
        if components.audio:
            sample_rate = int(components.audio["sample_rate"])
            waveform = components.audio["waveform"]
            waveform = waveform[:, :, : math.ceil((sample_rate / rate) * frames)]
            samples = waveform.movedim(2, 1).reshape(-1).float().cpu().contiguous().numpy()
            audio_file = name + AUDIO_EXT
            with open(os.path.join(full_output_folder, audio_file), "wb") as fh:
                fh.write(samples.astype("<f4", copy=False))
            audio = {
                "file": audio_file,
                "sample_rate": sample_rate,
                "channels": int(waveform.shape[1]),
                "sample_fmt": "f32le",
            }
        header = {
            "version": 1,
            "width": width,
            "height": height,
            "frames": frames,
            "fps": [rate.numerator, rate.denominator],
            "pix_fmt": "rgb24",
            "format": format,
            "codec": codec,
            "output": name + ".mp4",
            "audio": audio,
            "metadata": {k: json.dumps(v) for k, v in metadata.items()},
        }
        blob = json.dumps(header).encode()
        frames_file = name + FRAMES_EXT
        with open(os.path.join(full_output_folder, frames_file), "wb") as fh:
            fh.write(MAGIC + struct.pack("<Q", len(blob)) + blob)
            _write_frames(fh, images)
        items.append({"filename": frames_file, "subfolder": subfolder, "type": "output"})
        if audio is not None:
            items.append({"filename": audio["file"], "subfolder": subfolder, "type": "output"})
        return {"ui": {"comfy_worker_frames": items}}
