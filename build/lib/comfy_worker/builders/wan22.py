"""Wan 2.2 graphs from parameters: pure functions → API-format graphs with readable ``_meta.title``s.

The one place that knows Wan 2.2 graph shapes (the task handlers and the ``wan22_i2v_chain`` profile use these).
Shapes follow ComfyUI's official templates and use only core nodes of ComfyUI 0.3.64:

* ``i2v`` / ``t2v`` / ``flf2v`` (14B): two ``UNETLoader``s (HIGH- and LOW-noise experts) → [LoRAs] →
  ``ModelSamplingSD3`` (shift); ``CLIPLoader`` (UMT5-XXL, ``type: wan``) → two ``CLIPTextEncode``; the latent from
  ``WanImageToVideo`` / ``EmptyHunyuanLatentVideo`` / ``WanFirstLastFrameToVideo``; ``KSamplerAdvanced`` HIGH for
  steps ``0..boundary_step`` returning leftover noise, then ``KSamplerAdvanced`` LOW for the rest without new noise;
  ``VAEDecode`` → ``CreateVideo`` (fps) → ``SaveVideo``.
* ``ti2v`` (5B): one model, ``Wan22ImageToVideoLatent`` (image optional), one ``KSampler``, the Wan 2.2 VAE.
* ``s2v`` (14B S2V): ``LoadAudio`` → ``AudioEncoderLoader`` / ``AudioEncoderEncode`` → ``WanSoundImageToVideo`` for the
  first window of 77 frames, then per further window ``WanSoundImageToVideoExtend`` → ``KSampler`` → ``LatentConcat``;
  the template's first-frame fix (``LatentCut`` + ``LatentConcat``, ``ImageFromBatch`` from frame 3); ``CreateVideo``
  carries the audio track into the mp4.

Each ``build_*`` takes the task type's parameters (see :mod:`.params`; media inputs are file names in ComfyUI's
input folder) and returns the graph. :func:`build` does the same from a task's raw params.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from comfy_worker.builders.params import (
    CACHE_KINDS,
    FLF2V,
    I2V,
    MEDIA_KEYS,
    S2V,
    S2V_WINDOW,
    T2V,
    TI2V,
    Resolved,
    resolve,
    s2v_windows,
)
from comfy_worker.config import is_input_url

Link = list[Any]  # [node_id, output_index]


@dataclass
class Graph:
    """An API-format graph under construction; node ids are "1", "2", … in the order nodes are added."""

    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)  # role name → node id (for chains and tests)

    def add(self, class_type: str, title: str, role: str | None = None, **inputs: Any) -> str:
        node_id = str(len(self.nodes) + 1)
        self.nodes[node_id] = {
            "class_type": class_type,
            "inputs": {k: v for k, v in inputs.items() if v is not None},
            "_meta": {"title": title},
        }
        if role:
            self.roles[role] = node_id
        return node_id


def out(node_id: str, slot: int = 0) -> Link:
    return [node_id, slot]


# --- shared pieces ------------------------------------------------------------------------------------------


def _text(g: Graph, v: Mapping[str, Any]) -> tuple[str, str]:
    clip = g.add("CLIPLoader", "Text encoder (UMT5-XXL)", clip_name=v["text_encoder"], type="wan", device="default")
    pos = g.add("CLIPTextEncode", "Positive prompt", "positive_prompt", text=v["prompt"], clip=out(clip))
    neg = g.add("CLIPTextEncode", "Negative prompt", "negative_prompt", text=v["negative_prompt"], clip=out(clip))
    return pos, neg


def _model(g: Graph, v: Mapping[str, Any], name: str, label: str, which: str, lightning: str | None) -> str:
    """UNETLoader → the caller's LoRAs for this model → the 4-step LoRA (use_lora) → ModelSamplingSD3."""
    role = "model" if which == "model" else f"{which}_model"
    node = g.add("UNETLoader", f"{label} model", role, unet_name=name, weight_dtype="default")
    for lora in v["loras"]:
        if lora.get("model", "both") in (which, "both"):
            node = g.add(
                "LoraLoaderModelOnly",
                f"LoRA {lora['name']} ({label})",
                model=out(node),
                lora_name=lora["name"],
                strength_model=lora["strength"],
            )
    if lightning and v.get("use_lora"):
        node = g.add(
            "LoraLoaderModelOnly",
            f"4-step LoRA ({label})",
            "lora" if which == "model" else f"{which}_lora",
            model=out(node),
            lora_name=lightning,
            strength_model=1.0,
        )
    node = g.add("ModelSamplingSD3", f"Shift ({label})", shift=v["shift"], model=out(node))
    cache = v.get("cache")
    if cache:  # opt-in: core EasyCache / LazyCache reuse the model's output on steps whose input barely changed
        node = g.add(CACHE_KINDS[cache["kind"]], f"Step cache ({label})", f"{which}_cache", model=out(node),
                     reuse_threshold=cache["reuse_threshold"], start_percent=cache["start_percent"],
                     end_percent=cache["end_percent"], verbose=False)  # fmt: skip
    if v.get("compile"):  # opt-in: torch.compile (inductor) of the diffusion model; compiled on its first steps
        node = g.add("TorchCompileModel", f"torch.compile ({label})", f"{which}_compile", model=out(node),
                     backend="inductor")  # fmt: skip
    return node


def _sampler(
    g: Graph, v: Mapping[str, Any], which: str, model: str, conditioning: tuple[Link, Link], latent: Link
) -> str:
    """One pass of the 14B pair: HIGH samples steps 0..boundary_step with fresh noise and returns the leftover
    noise; LOW continues from boundary_step to the end without adding noise."""
    b, steps, high = v["boundary_step"], v["steps"], which == "high"
    first, last = (0, b) if high else (b, steps)
    return g.add(
        "KSamplerAdvanced",
        f"Sampler {which.upper()} noise (steps {first}-{last} of {steps})",
        f"{which}_sampler",
        model=out(model), add_noise="enable" if high else "disable", noise_seed=v["seed"] if high else 0,
        steps=steps, cfg=v["cfg_scale"], sampler_name=v["sampler"], scheduler=v["scheduler"],
        positive=conditioning[0], negative=conditioning[1], latent_image=latent, start_at_step=first,
        end_at_step=last, return_with_leftover_noise="enable" if high else "disable",
    )  # fmt: skip


def _samplers(g: Graph, v: Mapping[str, Any], conditioning: tuple[Link, Link], latent: Link) -> str:
    """The HIGH/LOW pair of the 14B models; returns the LOW sampler (its output is the final latent)."""
    high = _model(g, v, v["high_noise_model"], "HIGH noise", "high", v.get("high_noise_lora"))
    low = _model(g, v, v["low_noise_model"], "LOW noise", "low", v.get("low_noise_lora"))
    first = _sampler(g, v, "high", high, conditioning, latent)
    return _sampler(g, v, "low", low, conditioning, out(first))


def _video(
    g: Graph, v: Mapping[str, Any], vae: str, latent: Link, *, audio: Link | None = None, skip: int = 0,
    length: int = 4096,
) -> str:
    images = out(g.add("VAEDecode", "Decode", "decode", samples=latent, vae=out(vae)))
    if skip:
        title = f"Drop the first {skip} frames" + (f", keep {length}" if length < 4096 else "")
        dropped = g.add("ImageFromBatch", title, image=images, batch_index=skip, length=length)
        images = out(dropped)
    video = g.add("CreateVideo", f"Video ({v['fps']:g} fps)", images=images, fps=v["fps"], audio=audio)
    return g.add(
        "SaveVideo", "Save video", "video_out", video=out(video), filename_prefix=v["filename_prefix"],
        format="auto", codec="auto",
    )  # fmt: skip


def _image(g: Graph, name: str | None, title: str, role: str) -> Link | None:
    return out(g.add("LoadImage", title, role, image=name)) if name else None


def _image_to_video(g: Graph, v: Mapping[str, Any], pos: str, neg: str, vae: str, start: Link | None) -> str:
    return g.add(
        "WanImageToVideo", "Image to video", "frames",
        positive=out(pos), negative=out(neg), vae=out(vae), width=v["width"], height=v["height"],
        length=v["num_frames"], batch_size=1, start_image=start,
    )  # fmt: skip


# --- the five task types -------------------------------------------------------------------------------------


def _i2v(v: Mapping[str, Any], image: str | None) -> Graph:
    g = Graph()
    start = _image(g, image, "Start image", "start_image")
    pos, neg = _text(g, v)
    vae = g.add("VAELoader", "VAE (Wan 2.1)", vae_name=v["vae_model"])
    cond = _image_to_video(g, v, pos, neg, vae, start)
    low = _samplers(g, v, (out(cond, 0), out(cond, 1)), out(cond, 2))
    _video(g, v, vae, out(low))
    return g


def _t2v(v: Mapping[str, Any]) -> Graph:
    g = Graph()
    pos, neg = _text(g, v)
    vae = g.add("VAELoader", "VAE (Wan 2.1)", vae_name=v["vae_model"])
    latent = g.add(
        "EmptyHunyuanLatentVideo", "Empty video latent", "frames",
        width=v["width"], height=v["height"], length=v["num_frames"], batch_size=1,
    )  # fmt: skip
    low = _samplers(g, v, (out(pos), out(neg)), out(latent))
    _video(g, v, vae, out(low))
    return g


def _flf2v(v: Mapping[str, Any], image: str | None, last_image: str | None) -> Graph:
    g = Graph()
    first = _image(g, image, "First frame", "start_image")
    last = _image(g, last_image, "Last frame", "last_image")
    pos, neg = _text(g, v)
    vae = g.add("VAELoader", "VAE (Wan 2.1)", vae_name=v["vae_model"])
    cond = g.add(
        "WanFirstLastFrameToVideo", "First and last frame to video", "frames",
        positive=out(pos), negative=out(neg), vae=out(vae), width=v["width"], height=v["height"],
        length=v["num_frames"], batch_size=1, start_image=first, end_image=last,
    )  # fmt: skip
    low = _samplers(g, v, (out(cond, 0), out(cond, 1)), out(cond, 2))
    _video(g, v, vae, out(low))
    return g


def _ti2v(v: Mapping[str, Any], image: str | None) -> Graph:
    g = Graph()
    start = _image(g, image, "Start image (optional)", "start_image")
    model = _model(g, v, v["diffusion_model"], "5B", "model", None)
    pos, neg = _text(g, v)
    vae = g.add("VAELoader", "VAE (Wan 2.2)", vae_name=v["vae_model"])
    latent = g.add(
        "Wan22ImageToVideoLatent", "Video latent" + (" from the start image" if image else ""), "frames",
        vae=out(vae), width=v["width"], height=v["height"], length=v["num_frames"], batch_size=1, start_image=start,
    )  # fmt: skip
    sampled = g.add(
        "KSampler", f"Sampler ({v['steps']} steps)", "sampler",
        model=out(model), seed=v["seed"], steps=v["steps"], cfg=v["cfg_scale"], sampler_name=v["sampler"],
        scheduler=v["scheduler"], positive=out(pos), negative=out(neg), latent_image=out(latent), denoise=1.0,
    )  # fmt: skip
    _video(g, v, vae, out(sampled))
    return g


def _s2v(v: Mapping[str, Any], image: str | None, audio: str | None) -> Graph:
    g = Graph()
    ref = _image(g, image, "Reference image", "start_image")
    sound = g.add("LoadAudio", "Audio", "audio", audio=audio)
    model = _model(g, v, v["diffusion_model"], "S2V", "model", v.get("lora"))
    pos, neg = _text(g, v)
    vae = g.add("VAELoader", "VAE (Wan 2.1)", vae_name=v["vae_model"])
    encoder = g.add("AudioEncoderLoader", "Audio encoder", audio_encoder_name=v["audio_encoder"])
    encoded = g.add("AudioEncoderEncode", "Encode audio", audio_encoder=out(encoder), audio=out(sound))
    windows = s2v_windows(v["num_frames"])

    def sampler(n: int, cond: str) -> str:
        return g.add(
            "KSampler", f"Sampler window {n}/{windows} ({v['steps']} steps)", f"sampler_{n}",
            model=out(model), seed=(v["seed"] + n - 1) % 2**64, steps=v["steps"], cfg=v["cfg_scale"],
            sampler_name=v["sampler"], scheduler=v["scheduler"], positive=out(cond, 0), negative=out(cond, 1),
            latent_image=out(cond, 2), denoise=1.0,
        )  # fmt: skip

    cond = g.add(
        "WanSoundImageToVideo", f"Sound to video, window 1/{windows}", "frames",
        positive=out(pos), negative=out(neg), vae=out(vae), width=v["width"], height=v["height"], length=S2V_WINDOW,
        batch_size=1, audio_encoder_output=out(encoded), ref_image=ref,
    )  # fmt: skip
    latent = out(sampler(1, cond))
    for n in range(2, windows + 1):
        ext = g.add(
            "WanSoundImageToVideoExtend", f"Extend, window {n}/{windows}",
            positive=out(pos), negative=out(neg), vae=out(vae), length=S2V_WINDOW, video_latent=latent,
            audio_encoder_output=out(encoded), ref_image=ref,
        )  # fmt: skip
        new = sampler(n, ext)
        latent = out(g.add("LatentConcat", f"Append window {n}", samples1=latent, samples2=out(new), dim="t"))
    first = g.add("LatentCut", "First latent frame", samples=latent, dim="t", index=0, amount=1)
    latent = out(g.add("LatentConcat", "Repeat the first latent frame", samples1=out(first), samples2=latent, dim="t"))
    # decoded: 80 frames per window + 1; the first 3 dropped as in the template, the rest cut to num_frames
    _video(g, v, vae, latent, audio=out(sound), skip=3, length=v["num_frames"])
    return g


# --- public API --------------------------------------------------------------------------------------------------


def build_resolved(resolved: Resolved, media: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """The graph for checked parameters; ``media`` maps image / last_image / audio to ComfyUI input file names."""
    v, m = resolved.values, dict(media or {})
    kind = resolved.task_type
    if kind == I2V:
        g = _i2v(v, m.get("image"))
    elif kind == T2V:
        g = _t2v(v)
    elif kind == TI2V:
        g = _ti2v(v, m.get("image"))
    elif kind == S2V:
        g = _s2v(v, m.get("image"), m.get("audio"))
    else:
        g = _flf2v(v, m.get("image"), m.get("last_image"))
    return g.nodes


def build(
    task_type: str, params: Mapping[str, Any] | None = None, media: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The graph for a task's raw params (checked with :func:`.params.resolve`). ``media`` names the uploaded
    input files; without it, ``params`` may name them directly (``image="start.png"``)."""
    raw = dict(params or {})
    names = dict(media or {})
    for key in MEDIA_KEYS:
        if isinstance(raw.get(key), str) and not is_input_url(raw[key]):
            names.setdefault(key, raw.pop(key))
        if names.get(key) and key not in raw:
            raw[key] = {"storage_path": names[key]}  # satisfies "required"; the graph uses the name
    return build_resolved(resolve(task_type, raw), names)


def _kwargs(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def build_i2v(image: str, prompt: str | None = None, **params: Any) -> dict[str, Any]:
    """Image to video (14B HIGH/LOW). ``image``: a file name in ComfyUI's input folder."""
    return build(I2V, _kwargs(prompt=prompt, **params), {"image": image})


def build_t2v(prompt: str | None = None, **params: Any) -> dict[str, Any]:
    """Text to video (14B HIGH/LOW)."""
    return build(T2V, _kwargs(prompt=prompt, **params))


def build_ti2v(prompt: str | None = None, image: str | None = None, **params: Any) -> dict[str, Any]:
    """Text (and optionally image) to video with the 5B model."""
    return build(TI2V, _kwargs(prompt=prompt, **params), {"image": image} if image else None)


def build_s2v(image: str, audio: str, prompt: str | None = None, **params: Any) -> dict[str, Any]:
    """Sound (and a reference image) to video, 14B S2V; ``num_frames`` above one window of 77 adds extend windows."""
    return build(S2V, _kwargs(prompt=prompt, **params), {"image": image, "audio": audio})


def build_flf2v(image: str, last_image: str, prompt: str | None = None, **params: Any) -> dict[str, Any]:
    """First and last frame to video (14B HIGH/LOW)."""
    return build(FLF2V, _kwargs(prompt=prompt, **params), {"image": image, "last_image": last_image})


def build_i2v_chain(params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``wan22_i2v_chain`` prompt-runner profile, generated: one base graph holding both passes of a chunk,
    and which of its nodes each pass keeps (profile format: ``base_workflow``, ``roles``, ``passes``,
    ``first_chunk``, ``optional_inputs``; see handlers/prompt_runner/profile.py).

    HIGH pass: the reference frame (the previous chunk's last frame; none for chunk 1) → ``WanImageToVideo`` →
    HIGH sampler → ``SaveLatent`` (to the path the plan gives). LOW pass: the same conditioning, ``LoadLatent`` →
    LOW sampler → decode → ``CreateVideo`` → ``SaveVideo``. Core nodes only. ``params`` are comfyui_i2v's
    (models, steps, cfg_scale, boundary_step, shift, use_lora, loras, width, height, fps, …)."""
    raw = {"image": {"storage_path": "chain-reference"}, **dict(params or {})}
    v = resolve(I2V, raw).values
    g = Graph()
    ref = out(g.add("LoadImage", "Reference frame (previous chunk)", "reference", image=""))
    pos, neg = _text(g, v)
    vae = g.add("VAELoader", "VAE (Wan 2.1)", vae_name=v["vae_model"])
    cond = _image_to_video(g, v, pos, neg, vae, ref)
    conditioning = (out(cond, 0), out(cond, 1))
    mark = len(g.nodes)
    high = _model(g, v, v["high_noise_model"], "HIGH noise", "high", v.get("high_noise_lora"))
    sampled = _sampler(g, v, "high", high, conditioning, out(cond, 2))
    g.add("SaveLatent", "Save the HIGH-noise latent", "latent_save", samples=out(sampled), filename_prefix="latents/x")
    high_only = list(g.nodes)[mark:]
    mark = len(g.nodes)
    low = _model(g, v, v["low_noise_model"], "LOW noise", "low", v.get("low_noise_lora"))
    latent = g.add("LoadLatent", "Load the HIGH-noise latent", "latent_load", latent="")
    _video(g, v, vae, out(_sampler(g, v, "low", low, conditioning, out(latent))))
    low_only = list(g.nodes)[mark:]
    r = g.roles
    return {
        "base_workflow": g.nodes,
        "roles": {
            "positive_prompt": {"node": r["positive_prompt"], "input": "text"},
            "negative_prompt": {"node": r["negative_prompt"], "input": "text"},
            "frames": {"node": r["frames"], "input": "length"},
            "seed": {"node": r["high_sampler"], "input": "noise_seed"},
            "reference": {"node": r["reference"], "input": "image"},
            "latent_save": {"node": r["latent_save"], "prefix": "filename_prefix"},
            "latent_load": {"node": r["latent_load"], "input": "latent", "path": "file"},
            "decode": {"node": r["decode"]},
            "video_out": {"node": r["video_out"], "input": "filename_prefix"},
        },
        "passes": {"high": {"remove": low_only}, "low": {"remove": high_only}},
        "first_chunk": {"remove": [r["reference"]]},
        "optional_inputs": {"WanImageToVideo": ["clip_vision_output", "start_image"]},
    }


CHAIN_BUILDERS = {"wan22_i2v_chain": build_i2v_chain}
