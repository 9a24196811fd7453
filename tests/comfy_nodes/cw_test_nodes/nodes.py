"""The test nodes (see the package docstring). Runs inside ComfyUI's own venv, imports ComfyUI modules."""

from __future__ import annotations

import math
import os
import struct
import subprocess
import time
import wave

import comfy.model_management
import comfy.utils
import folder_paths
import numpy as np
import torch

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif")


def _next_path(filename_prefix: str, ext: str, width: int = 1, height: int = 1) -> tuple[str, str, str]:
    """(full_path, filename, subfolder) of the next free file for this prefix in the output dir."""
    out_dir = folder_paths.get_output_directory()
    full_folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
        filename_prefix, out_dir, width, height
    )
    name = f"{filename}_{counter:05}_.{ext}"
    return os.path.join(full_folder, name), name, subfolder


class CWSaveVideoMP4:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE",),
                "fps": ("FLOAT", {"default": 8.0, "min": 0.1, "max": 120.0}),
                "filename_prefix": ("STRING", {"default": "video/cw"}),
            }
        }

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "cw_test"

    def save(self, images, fps, filename_prefix):
        frames = (images.clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()
        n, h, w, _ = frames.shape
        path, name, subfolder = _next_path(filename_prefix, "mp4", w, h)
        cmd = [
            "ffmpeg",
            "-y",
            "-loglevel",
            "error",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            f"{w}x{h}",
            "-r",
            str(fps),
            "-i",
            "-",
            "-vf",
            "pad=ceil(iw/2)*2:ceil(ih/2)*2",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            path,
        ]
        proc = subprocess.run(cmd, input=frames.tobytes(), capture_output=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"ffmpeg failed: {proc.stderr.decode(errors='replace')[-500:]}")
        item = {
            "filename": name,
            "subfolder": subfolder,
            "type": "output",
            "format": "video/h264-mp4",
            "frame_rate": fps,
            "frame_count": n,
        }
        return {"ui": {"gifs": [item]}}


def _input_videos() -> list[str]:
    base = folder_paths.get_input_directory()
    found = []
    for root, _dirs, files in os.walk(base):
        for f in files:
            if f.lower().endswith(VIDEO_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(root, f), base).replace(os.sep, "/"))
    return sorted(found)


class CWLoadVideo:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "video": (_input_videos(), {"video_upload": True}),
                "max_frames": ("INT", {"default": 0, "min": 0, "max": 10000}),
            }
        }

    RETURN_TYPES = ("IMAGE", "INT")
    RETURN_NAMES = ("frames", "frame_count")
    FUNCTION = "load"
    CATEGORY = "cw_test"

    def load(self, video, max_frames):
        path = folder_paths.get_annotated_filepath(video)
        probe = subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=width,height",
                "-of",
                "csv=p=0",
                path,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode != 0:
            raise RuntimeError(f"ffprobe could not read {video}: {probe.stderr.strip()[-300:]}")
        w, h = (int(v) for v in probe.stdout.strip().split(",")[:2])
        cmd = ["ffmpeg", "-loglevel", "error", "-i", path]
        if max_frames:
            cmd += ["-frames:v", str(max_frames)]
        cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
        proc = subprocess.run(cmd, capture_output=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"ffmpeg could not decode {video}: {proc.stderr.decode(errors='replace')[-300:]}")
        arr = np.frombuffer(proc.stdout, dtype=np.uint8).reshape(-1, h, w, 3)
        frames = torch.from_numpy(arr.astype(np.float32) / 255.0)
        return (frames, int(frames.shape[0]))

    @classmethod
    def IS_CHANGED(cls, video, max_frames):
        path = folder_paths.get_annotated_filepath(video)
        return os.path.getmtime(path) if os.path.exists(path) else ""


class CWSaveAudioWav:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "seconds": ("FLOAT", {"default": 0.25, "min": 0.01, "max": 10.0}),
                "frequency": ("FLOAT", {"default": 440.0, "min": 20.0, "max": 20000.0}),
                "filename_prefix": ("STRING", {"default": "audio/cw"}),
            }
        }

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "cw_test"

    def save(self, seconds, frequency, filename_prefix):
        path, name, subfolder = _next_path(filename_prefix, "wav")
        rate = 16000
        samples = (int(32767 * 0.5 * math.sin(2 * math.pi * frequency * i / rate)) for i in range(int(rate * seconds)))
        with wave.open(path, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(b"".join(struct.pack("<h", s) for s in samples))
        return {"ui": {"audio": [{"filename": name, "subfolder": subfolder, "type": "output"}]}}


class CWRaise:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"message": ("STRING", {"default": "boom"})},
            "optional": {"images": ("IMAGE",)},
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "cw_test"

    def run(self, message, images=None):
        raise ValueError(message)

    @classmethod
    def IS_CHANGED(cls, **_kwargs):
        return float("nan")


class CWSlow:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "seconds": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3600.0}),
                "steps": ("INT", {"default": 10, "min": 1, "max": 10000}),
            },
            "optional": {"images": ("IMAGE",)},
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "cw_test"

    def run(self, seconds, steps, images=None):
        bar = comfy.utils.ProgressBar(steps)
        for _ in range(steps):
            deadline = time.monotonic() + seconds / steps
            while time.monotonic() < deadline:
                comfy.model_management.throw_exception_if_processing_interrupted()
                time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
            bar.update(1)
        if images is None:
            images = torch.zeros((1, 8, 8, 3))
        return (images,)

    @classmethod
    def IS_CHANGED(cls, **_kwargs):
        return float("nan")


class CWFakeSampler:
    """A deterministic stand-in for a video sampler: (latent, reference image, seed) -> latent and frames.

    frames[i] = reference image shifted by a value derived from seed, i and the latent mean, so a HIGH → LOW
    chain produces different but reproducible frames."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "latent": ("LATENT",),
                "image": ("IMAGE",),
                "frames": ("INT", {"default": 4, "min": 1, "max": 1024}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0}),
            }
        }

    RETURN_TYPES = ("LATENT", "IMAGE")
    RETURN_NAMES = ("latent", "frames")
    FUNCTION = "sample"
    CATEGORY = "cw_test"

    def sample(self, latent, image, frames, seed, denoise):
        samples = latent["samples"].float()
        gen = torch.Generator().manual_seed(int(seed) % (2**63))
        noise = torch.rand(samples.shape, generator=gen)
        out = samples * (1.0 - denoise) + noise * denoise
        ref = image[:1].float()
        level = float(out.mean())
        shifts = torch.tensor([((level + i * 0.07 + (seed % 97) / 97.0) % 1.0) for i in range(frames)])
        video = ((ref + shifts.view(-1, 1, 1, 1)) % 1.0).clamp(0, 1)
        return ({"samples": out}, video)


NODE_CLASS_MAPPINGS = {
    "CWSaveVideoMP4": CWSaveVideoMP4,
    "CWLoadVideo": CWLoadVideo,
    "CWSaveAudioWav": CWSaveAudioWav,
    "CWRaise": CWRaise,
    "CWSlow": CWSlow,
    "CWFakeSampler": CWFakeSampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {k: k.replace("CW", "CW ", 1) for k in NODE_CLASS_MAPPINGS}
