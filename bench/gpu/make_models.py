"""Write random-weight Wan 2.2 models in the real architectures and the key layouts ComfyUI detects.

No weights can be downloaded where the GPU benchmark runs, so this builds each model's parameter layout from
ComfyUI's own classes (instantiated on the ``meta`` device, so nothing is allocated), fills every tensor with
small random values on the GPU (normal, std 0.02; norms at 1, biases at 0), and saves it with safetensors
under the file names the official Comfy-Org templates use. Outputs are noise; compute, memory traffic and
timing are those of the real models.

``*_fp8_scaled`` files are written the way Comfy-Org's are: every Linear weight in ``float8_e4m3fn`` with a
float32 ``<layer>.scale_weight`` beside it, everything else in bf16, and an empty ``scaled_fp8`` tensor that
makes ComfyUI pick its scaled-fp8 operations. UMT5-XXL carries its tokenizer as a ``spiece_model`` uint8
tensor: a small unigram sentencepiece model trained on the spot (pad 0, eos 1, unk 2), whose ids stay inside
the real 256k embedding.

Usage (run with ComfyUI's source tree importable, i.e. from the ComfyUI directory or with it on sys.path)::

    python bench/gpu/make_models.py --comfy DIR --models-dir DIR ti2v_5b vae22 umt5
    python bench/gpu/make_models.py --comfy DIR --models-dir DIR i2v_14b_high i2v_14b_low vae21 loras_i2v
    python bench/gpu/make_models.py --layers 2 ... t2v_14b_high t2v_14b_low loras_t2v s2v_14b wav2vec2
                                                     # full width, 2 blocks: what bench_wan_gpu.py's coverage runs
    python bench/gpu/make_models.py --tiny ...       # same layouts at toy sizes, on the CPU (a local check)

Then ``--check`` loads each file through ComfyUI's own loaders and prints the model class it detected.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# name -> (folder, file name) as in the official templates
FILES = {
    "ti2v_5b": ("diffusion_models", "wan2.2_ti2v_5B_fp16.safetensors"),
    "i2v_14b_high": ("diffusion_models", "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"),
    "i2v_14b_low": ("diffusion_models", "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors"),
    "vae22": ("vae", "wan2.2_vae.safetensors"),
    "vae21": ("vae", "wan_2.1_vae.safetensors"),
    "umt5": ("text_encoders", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
    "lora_i2v_high": ("loras", "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors"),
    "lora_i2v_low": ("loras", "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors"),
    "t2v_14b_high": ("diffusion_models", "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"),
    "t2v_14b_low": ("diffusion_models", "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"),
    "lora_t2v_high": ("loras", "wan2.2_t2v_lightx2v_4steps_lora_v1.1_high_noise.safetensors"),
    "lora_t2v_low": ("loras", "wan2.2_t2v_lightx2v_4steps_lora_v1.1_low_noise.safetensors"),
    "s2v_14b": ("diffusion_models", "wan2.2_s2v_14B_fp8_scaled.safetensors"),
    "wav2vec2": ("audio_encoders", "wav2vec2_large_english_fp16.safetensors"),
}
GROUPS = {"loras_i2v": ["lora_i2v_high", "lora_i2v_low"], "loras_t2v": ["lora_t2v_high", "lora_t2v_low"]}
# which Wan layout each diffusion model (and the LoRAs made for it) has
WAN_MODELS = {"ti2v_5b": "WAN_5B", "i2v_14b_high": "WAN_14B_I2V", "i2v_14b_low": "WAN_14B_I2V",
              "t2v_14b_high": "WAN_14B_T2V", "t2v_14b_low": "WAN_14B_T2V", "s2v_14b": "WAN_14B_S2V"}
LORA_BASE = {"lora_i2v_high": "i2v_14b_high", "lora_i2v_low": "i2v_14b_low",
             "lora_t2v_high": "t2v_14b_high", "lora_t2v_low": "t2v_14b_low"}

WAN_5B = dict(
    model_type="t2v",
    patch_size=(1, 2, 2),
    text_len=512,
    in_dim=48,
    dim=3072,
    ffn_dim=14336,
    freq_dim=256,
    text_dim=4096,
    out_dim=48,
    num_heads=24,
    num_layers=30,
)
# Wan 2.2 I2V-A14B: no CLIP-vision image embedding (unlike 2.1 I2V), so ComfyUI reads it as model_type t2v
# with in_dim 36 (16 noise + 4 mask + 16 image-latent channels)
WAN_14B_I2V = dict(
    model_type="t2v",
    patch_size=(1, 2, 2),
    text_len=512,
    in_dim=36,
    dim=5120,
    ffn_dim=13824,
    freq_dim=256,
    text_dim=4096,
    out_dim=16,
    num_heads=40,
    num_layers=40,
)
# Wan 2.2 T2V-A14B: the same transformer with 16 input channels (noise only)
WAN_14B_T2V = {**WAN_14B_I2V, "in_dim": 16}
# Wan 2.2 S2V-14B (ComfyUI's WanModel_S2V; its audio and frame-pack modules take their defaults, as ComfyUI's
# loader does: causal audio encoder over wav2vec2's 1024-wide features, audio injected at 12 of the 40 blocks)
WAN_14B_S2V = {**WAN_14B_T2V, "model_type": "s2v"}
# wav2vec2 large (ComfyUI's Wav2Vec2Model, the config its loader picks for a 1024-wide encoder)
WAV2VEC2_LARGE = dict(embed_dim=1024, num_heads=16, num_layers=24, conv_norm=True, conv_bias=True,
                      do_normalize=True, do_stable_layer_norm=True)
VAE22 = dict(
    dim=160,
    z_dim=48,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    attn_scales=[],
    temperal_downsample=[False, True, True],
    dropout=0.0,
)
VAE21 = dict(
    dim=96,
    z_dim=16,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    attn_scales=[],
    temperal_downsample=[False, True, True],
    dropout=0.0,
)
LORA_RANK = 64


def tiny(cfg: dict[str, Any], kind: str) -> dict[str, Any]:
    """The same layout at toy size (for a CPU check of the key layout and ComfyUI's detection)."""
    cfg = dict(cfg)
    if kind == "wan":
        cfg.update(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=4096)
    elif kind == "vae":
        pass  # ComfyUI builds the VAE from fixed sizes: the real one is small enough for the CPU
    return cfg


def layout(factory: Callable[[], torch.nn.Module]) -> tuple[dict[str, torch.Tensor], set[str], set[str]]:
    """(meta state dict, Linear weight keys, norm-like keys) of a module built on the meta device."""
    with torch.device("meta"):
        module = factory()
    linear, norm = set(), set()
    for name, mod in module.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(mod, torch.nn.Linear):
            linear.add(f"{prefix}weight")
        cls = type(mod).__name__.lower()
        if "norm" in cls:
            for p, _ in mod.named_parameters(recurse=False):
                if p != "bias":
                    norm.add(f"{prefix}{p}")
    return module.state_dict(), linear, norm


def fill(
    meta: dict[str, torch.Tensor],
    linear: set[str],
    norm: set[str],
    *,
    device: str,
    fp8_linear: bool,
    dtype: torch.dtype = torch.bfloat16,
) -> dict[str, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(1234)
    out: dict[str, torch.Tensor] = {}
    for key, t in meta.items():
        if not t.is_floating_point():
            out[key] = torch.zeros(t.shape, dtype=t.dtype)
            continue
        leaf = key.rsplit(".", 1)[-1]
        if key in norm or leaf in ("gamma",):
            v = torch.ones(t.shape, device=device, dtype=dtype)
        elif leaf == "bias":
            v = torch.zeros(t.shape, device=device, dtype=dtype)
        elif fp8_linear and key in linear:
            # unit-normal values in fp8, scaled back to std 0.02 by scale_weight (as _fp8_scaled files do)
            w = torch.randn(t.shape, device=device, dtype=torch.bfloat16, generator=gen)
            out[key] = w.clamp_(-8, 8).to(torch.float8_e4m3fn).cpu()
            out[key[: -len("weight")] + "scale_weight"] = torch.tensor(0.02, dtype=torch.float32)
            continue
        else:
            v = torch.randn(t.shape, device=device, dtype=dtype, generator=gen).mul_(0.02)
        out[key] = v.cpu()
    if fp8_linear:
        out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


def spiece_model_bytes(vocab: int = 2000) -> bytes:
    """A small unigram sentencepiece model (pad 0, eos 1, unk 2), trained on random words."""
    import sentencepiece as spm

    rnd = random.Random(7)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rnd.choice(letters) for _ in range(rnd.randint(2, 9))) for _ in range(4000)]
    english = [
        "a",
        "cinematic",
        "shot",
        "of",
        "a",
        "sunset",
        "over",
        "the",
        "beach",
        "waves",
        "camera",
        "slowly",
        "pans",
        "golden",
        "light",
        "city",
        "rain",
        "at",
        "night",
        "neon",
        "reflections",
        "person",
        "walking",
        "umbrella",
        "street",
    ]
    lines = [" ".join(rnd.choice(words + english * 20) for _ in range(12)) for _ in range(20000)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        vocab_size=vocab,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        num_threads=8,
    )
    return buf.getvalue()


def _import_comfy(tree: Path, device: str) -> None:
    """Make ComfyUI's tree importable; on the CPU tell its device logic so before it looks for CUDA."""
    if str(tree) not in sys.path:
        sys.path.insert(0, str(tree))
    import comfy.cli_args

    if device == "cpu":
        comfy.cli_args.args.cpu = True


def wan_config(name: str, *, tiny_mode: bool, layers: int | None) -> dict[str, Any]:
    """The Wan layout of a diffusion model (or of the model a LoRA is made for): full, --tiny, or --layers deep."""
    cfg = dict(globals()[WAN_MODELS[LORA_BASE.get(name, name)]])
    if tiny_mode:
        cfg = tiny(cfg, "wan")
    if layers:
        cfg["num_layers"] = layers  # same width, fewer blocks: ComfyUI counts the blocks, detects the same model
    return cfg


def wan_module(cfg: dict[str, Any], ops: Any) -> Callable[[], torch.nn.Module]:
    if cfg.get("model_type") == "s2v":
        from comfy.ldm.wan.model import WanModel_S2V

        return lambda: WanModel_S2V(**cfg, operations=ops)
    from comfy.ldm.wan.model import WanModel

    return lambda: WanModel(**cfg, operations=ops)


def build(name: str, tree: Path, *, tiny_mode: bool, device: str, layers: int | None = None) -> dict[str, torch.Tensor]:
    _import_comfy(tree, device)
    import comfy.ops

    ops = comfy.ops.disable_weight_init
    if name in WAN_MODELS:
        cfg = wan_config(name, tiny_mode=tiny_mode, layers=layers)
        meta, linear, norm = layout(wan_module(cfg, ops))
        return fill(meta, linear, norm, device=device, fp8_linear=name != "ti2v_5b")
    if name in ("vae22", "vae21"):
        if name == "vae22":
            from comfy.ldm.wan.vae2_2 import WanVAE

            cfg = VAE22
        else:
            from comfy.ldm.wan.vae import WanVAE

            cfg = VAE21
        cfg = tiny(cfg, "vae") if tiny_mode else cfg
        meta, linear, norm = layout(lambda: WanVAE(**cfg))
        return fill(meta, linear, norm, device=device, fp8_linear=False)
    if name == "wav2vec2":
        from comfy.audio_encoders.wav2vec2 import Wav2Vec2Model

        # the real size even with --tiny (0.3 B): ComfyUI picks the config from the encoder's width
        meta, linear, norm = layout(lambda: Wav2Vec2Model(**WAV2VEC2_LARGE, operations=comfy.ops.manual_cast))
        return fill(meta, linear, norm, device=device, fp8_linear=False, dtype=torch.float16)
    if name == "umt5":
        from comfy.text_encoders.t5 import T5

        config = json.loads((tree / "comfy" / "text_encoders" / "umt5_config_xxl.json").read_text())
        # ComfyUI builds UMT5 from its own config file, so even --tiny writes the real size (5.7 B)
        meta, linear, norm = layout(lambda: T5(config, torch.bfloat16, None, ops))
        sd = fill(meta, linear, norm, device=device, fp8_linear=True)
        sd["spiece_model"] = torch.frombuffer(bytearray(spiece_model_bytes()), dtype=torch.uint8)
        return sd
    if name in LORA_BASE:
        meta, linear, _ = layout(wan_module(wan_config(name, tiny_mode=tiny_mode, layers=layers), ops))
        gen = torch.Generator(device=device).manual_seed(99)
        sd = {}
        for key in sorted(linear):
            if not key.startswith("blocks."):
                continue
            out_f, in_f = meta[key].shape
            base = "diffusion_model." + key[: -len(".weight")]
            sd[f"{base}.lora_down.weight"] = (
                torch.randn(LORA_RANK, in_f, device=device, dtype=torch.bfloat16, generator=gen) * 0.01
            ).cpu()
            sd[f"{base}.lora_up.weight"] = (
                torch.randn(out_f, LORA_RANK, device=device, dtype=torch.bfloat16, generator=gen) * 0.01
            ).cpu()
        return sd
    raise SystemExit(f"unknown model {name!r}; known: {', '.join([*FILES, *GROUPS])}")


def check(name: str, path: Path, tree: Path) -> str:
    """Load ``path`` through ComfyUI's loaders and say what it detected."""
    import comfy.sd
    import comfy.utils

    folder = FILES[name][0]
    if folder == "diffusion_models":
        model = comfy.sd.load_diffusion_model(str(path))
        return (
            f"{type(model.model).__name__} config={type(model.model.model_config).__name__} "
            f"scaled_fp8={model.model.model_config.scaled_fp8} dtype={model.model.get_dtype()}"
        )
    if folder == "vae":
        vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path)))
        return (
            f"{type(vae.first_stage_model).__module__}.{type(vae.first_stage_model).__name__} "
            f"latent_channels={vae.latent_channels}"
        )
    if folder == "text_encoders":
        clip = comfy.sd.load_clip([str(path)], clip_type=comfy.sd.CLIPType.WAN)
        tokens = clip.tokenize("a cinematic shot of a sunset")
        n = len(next(iter(tokens.values()))[0])
        return f"{type(clip.cond_stage_model).__name__} tokens={n}"
    if folder == "loras":
        import comfy.lora

        sd = comfy.utils.load_torch_file(str(path))
        base = path.parent.parent / "diffusion_models" / FILES[LORA_BASE[name]][1]
        if not base.exists():
            return f"lora tensors={len(sd)} rank={LORA_RANK} (no {LORA_BASE[name]} beside it to apply it to)"
        model = comfy.sd.load_diffusion_model(str(base))
        patches = comfy.lora.load_lora(sd, comfy.lora.model_lora_keys_unet(model.model, {}))
        return f"lora tensors={len(sd)} rank={LORA_RANK}, patches {len(patches)} of {LORA_BASE[name]}'s layers"
    if folder == "audio_encoders":
        import comfy.audio_encoders.audio_encoders as ae

        enc = ae.load_audio_encoder_from_sd(comfy.utils.load_torch_file(str(path)))
        return f"{type(enc.model).__name__} embed_dim={enc.model.encoder.layer_norm.weight.shape[0]}"
    return "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfy", type=Path, required=True, help="ComfyUI source tree")
    ap.add_argument("--models-dir", type=Path, required=True, help="ComfyUI's models folder")
    ap.add_argument("--tiny", action="store_true", help="toy sizes on the CPU: checks layouts, not speed")
    ap.add_argument("--check", action="store_true", help="load each written file through ComfyUI and log it")
    ap.add_argument("--layers", type=int, help="Wan models (and their LoRAs) this many blocks deep, at full width: "
                    "the same model type to ComfyUI at a fraction of the size (graph coverage, not timing)")
    ap.add_argument("models", nargs="+")
    args = ap.parse_args()
    names = [n for m in args.models for n in GROUPS.get(m, [m])]
    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    os.chdir(args.comfy)  # ComfyUI's modules expect to run from their tree
    from safetensors.torch import save_file

    for name in names:
        folder, filename = FILES[name]
        path = args.models_dir / folder / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        sd = build(name, args.comfy.resolve(), tiny_mode=args.tiny, device=device, layers=args.layers)
        t1 = time.monotonic()
        save_file(sd, str(path))
        params = sum(v.numel() for k, v in sd.items() if k != "spiece_model")
        size = path.stat().st_size
        del sd
        print(
            f"make_models: {name}: {path.name} {params / 1e9:.2f} B params, {size / 2**30:.2f} GiB, "
            f"generated {t1 - t0:.1f} s, saved {time.monotonic() - t1:.1f} s",
            flush=True,
        )
        if args.check:
            print(f"make_models: {name}: ComfyUI detects {check(name, path, args.comfy.resolve())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
