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
        return self.decode(folder_paths.get_annotated_filepath(video), max_frames)

    @staticmethod
    def decode(path, max_frames):
        video = os.path.basename(path)
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


# --- chain stand-ins: tiny CPU versions of the Wan 2.2 HIGH/LOW chain's custom nodes --------------------------
# They read and write files by absolute path like the real custom nodes (SaveLatentWithPath, LoadLastLatent,
# Load Image From Path), so the worker's chain executor runs unchanged against them.


def _sleep_interruptible(seconds: float, steps: int) -> None:
    bar = comfy.utils.ProgressBar(max(steps, 1))
    for _ in range(max(steps, 1)):
        deadline = time.monotonic() + seconds / max(steps, 1)
        while time.monotonic() < deadline:
            comfy.model_management.throw_exception_if_processing_interrupted()
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
        bar.update(1)


class CWInt:
    """INTConstant stand-in."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "cw_test"

    def run(self, value):
        return (value,)


class CWTextEncode:
    """WanVideoTextEncode stand-in: prompts -> a small deterministic embedding."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "positive_prompt": ("STRING", {"default": "", "multiline": True}),
                "negative_prompt": ("STRING", {"default": "", "multiline": True}),
            }
        }

    RETURN_TYPES = ("CW_EMBEDS",)
    FUNCTION = "encode"
    CATEGORY = "cw_test"

    def encode(self, positive_prompt, negative_prompt):
        import zlib

        pos = zlib.crc32(positive_prompt.encode()) / 2**32
        neg = zlib.crc32(negative_prompt.encode()) / 2**32
        return ({"pos": pos, "neg": neg},)


class CWChunkSampler:
    """WanVideoSampler stand-in: one latent per frame (frames x 4 x h/8 x w/8). Without ``samples`` it starts
    from seeded noise (HIGH pass); with ``samples`` it refines them (LOW pass). ``reference`` tints the result."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "embeds": ("CW_EMBEDS",),
                "frames": ("INT", {"default": 9, "min": 1, "max": 4096}),
                "start_frame": ("INT", {"default": 0, "min": 0, "max": 1000000}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
                "steps": ("INT", {"default": 8, "min": 1, "max": 1000}),
                "start_step": ("INT", {"default": 0, "min": 0, "max": 1000}),
                "end_step": ("INT", {"default": 8, "min": 0, "max": 1000}),
                "width": ("INT", {"default": 32, "min": 8, "max": 1024, "step": 8}),
                "height": ("INT", {"default": 32, "min": 8, "max": 1024, "step": 8}),
                "delay_s": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 600.0}),
            },
            "optional": {"samples": ("LATENT",), "reference": ("IMAGE",)},
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "cw_test"

    def sample(
        self,
        embeds,
        frames,
        start_frame,
        seed,
        steps,
        start_step,
        end_step,
        width,
        height,
        delay_s,
        samples=None,
        reference=None,
    ):
        _sleep_interruptible(delay_s, max(end_step - start_step, 1))
        gen = torch.Generator().manual_seed((int(seed) * 1000003 + int(start_frame)) % (2**63))
        shape = (frames, 4, height // 8, width // 8)
        noise = torch.rand(shape, generator=gen)
        tint = 0.0 if reference is None else float(reference.float().mean())
        base = noise * 0.5 + embeds["pos"] * 0.25 + tint * 0.25
        if samples is not None:
            prev = samples["samples"].float()
            if prev.shape != shape:
                raise ValueError(f"samples have shape {tuple(prev.shape)}, expected {shape}")
            share = max(0.0, min(1.0, (end_step - start_step) / max(steps, 1)))
            base = prev * (1.0 - share * 0.5) + base * share * 0.5
        return ({"samples": base.clamp(0, 1)},)


class CWChunkDecode:
    """WanVideoDecode stand-in: latent (one per frame) -> IMAGE frames of width x height."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"
    CATEGORY = "cw_test"

    def decode(self, samples):
        lat = samples["samples"].float()
        _n, _c, h8, w8 = lat.shape
        rgb = lat[:, :3].permute(0, 2, 3, 1)  # n, h/8, w/8, 3
        img = rgb.repeat_interleave(8, dim=1).repeat_interleave(8, dim=2)
        return (img[:, : h8 * 8, : w8 * 8, :].clamp(0, 1).contiguous(),)


class CWSaveLatentWithPath:
    """SaveLatentWithPath stand-in: writes ``{folder_path}/{subfolder_name}/{filename}.latent``."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "samples": ("LATENT",),
                "folder_path": ("STRING", {"default": ""}),
                "subfolder_name": ("STRING", {"default": ""}),
                "filename": ("STRING", {"default": "latent"}),
            }
        }

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "cw_test"

    def save(self, samples, folder_path, subfolder_name, filename):
        folder = os.path.join(folder_path, subfolder_name) if subfolder_name else folder_path
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{filename}.latent")
        tmp = path + ".tmp"
        comfy.utils.save_torch_file({"latent_tensor": samples["samples"].contiguous()}, tmp)
        os.replace(tmp, path)
        return {"ui": {"latent_paths": [path]}}

    @classmethod
    def IS_CHANGED(cls, **_kwargs):
        return float("nan")


class CWLoadLastLatent:
    """LoadLastLatent stand-in: the newest ``*.latent`` in ``folder_path``."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"folder_path": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "load"
    CATEGORY = "cw_test"

    def load(self, folder_path):
        import safetensors.torch

        found = (
            sorted(
                (os.path.join(folder_path, f) for f in os.listdir(folder_path) if f.endswith(".latent")),
                key=lambda p: (os.path.getmtime(p), p),
            )
            if os.path.isdir(folder_path)
            else []
        )
        if not found:
            raise FileNotFoundError(f"no .latent file in {folder_path}")
        return ({"samples": safetensors.torch.load_file(found[-1])["latent_tensor"].float()},)

    @classmethod
    def IS_CHANGED(cls, **_kwargs):
        return float("nan")


def read_image(path):
    """An image file -> IMAGE (1, h, w, 3), RGB in [0, 1]."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr)[None, ...]


class CWLoadImageFromPath:
    """Load Image From Path stand-in: an image file by absolute path -> IMAGE (1, h, w, 3)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image_path": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "load"
    CATEGORY = "cw_test"

    def load(self, image_path):
        return (read_image(image_path),)

    @classmethod
    def IS_CHANGED(cls, **_kwargs):
        return float("nan")


class CWLoadVideoFromPath:
    """VHS_LoadVideoPath stand-in: a video file by absolute path -> IMAGE frames, minus the first N, then at most
    ``frame_load_cap`` of them (0: all), as VHS skips then caps."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "video": ("STRING", {"default": ""}),
                "skip_first_frames": ("INT", {"default": 0, "min": 0, "max": 100000}),
            },
            "optional": {"frame_load_cap": ("INT", {"default": 0, "min": 0, "max": 100000})},
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "load"
    CATEGORY = "cw_test"

    def load(self, video, skip_first_frames, frame_load_cap=0):
        frames, _count = CWLoadVideo.decode(video, 0)
        frames = frames[skip_first_frames:]
        return (frames[:frame_load_cap] if frame_load_cap else frames,)

    @classmethod
    def IS_CHANGED(cls, **_kwargs):
        return float("nan")


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class CWLoadImage:
    """LoadImage that also lists files in subfolders of the input dir (the old server's LoadImage lists only the
    top level, so it refuses the per-task upload subfolders the worker uses)."""

    @classmethod
    def INPUT_TYPES(cls):
        base = folder_paths.get_input_directory()
        found = []
        for root, _dirs, files in os.walk(base):
            for f in files:
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    found.append(os.path.relpath(os.path.join(root, f), base).replace(os.sep, "/"))
        return {"required": {"image": (sorted(found), {"image_upload": True})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "load"
    CATEGORY = "cw_test"

    def load(self, image):
        return (read_image(folder_paths.get_annotated_filepath(image)),)

    @classmethod
    def IS_CHANGED(cls, image):
        path = folder_paths.get_annotated_filepath(image)
        return os.path.getmtime(path) if os.path.exists(path) else ""


class CWNoiseImage:
    """IMAGE -> seeded uniform noise of width x height, tinted by the input's mean: incompressible, so a
    600 x 600 SaveImage PNG is about 1 MB."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE",),
                "width": ("INT", {"default": 600, "min": 8, "max": 4096}),
                "height": ("INT", {"default": 600, "min": 8, "max": 4096}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "cw_test"

    def run(self, images, width, height, seed):
        gen = torch.Generator().manual_seed(int(seed))
        noise = torch.rand((1, height, width, 3), generator=gen)
        tint = float(images.float().mean())
        return (((noise + tint) % 1.0).contiguous(),)


NODE_CLASS_MAPPINGS = {
    "CWSaveVideoMP4": CWSaveVideoMP4,
    "CWLoadVideo": CWLoadVideo,
    "CWSaveAudioWav": CWSaveAudioWav,
    "CWRaise": CWRaise,
    "CWSlow": CWSlow,
    "CWFakeSampler": CWFakeSampler,
    "CWInt": CWInt,
    "CWTextEncode": CWTextEncode,
    "CWChunkSampler": CWChunkSampler,
    "CWChunkDecode": CWChunkDecode,
    "CWSaveLatentWithPath": CWSaveLatentWithPath,
    "CWLoadLastLatent": CWLoadLastLatent,
    "CWLoadImageFromPath": CWLoadImageFromPath,
    "CWLoadVideoFromPath": CWLoadVideoFromPath,
    "CWLoadImage": CWLoadImage,
    "CWNoiseImage": CWNoiseImage,
}
NODE_DISPLAY_NAME_MAPPINGS = {k: k.replace("CW", "CW ", 1) for k in NODE_CLASS_MAPPINGS}
