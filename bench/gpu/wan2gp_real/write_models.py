"""Random-weight model files for Wan2GP's Wan 2.1 text-to-video 1.3B (``t2v_1.3B``), under the names and key
layouts Wan2GP's loader (mmgp) reads, built from Wan2GP's own model classes:

    python bench/gpu/wan2gp_real/write_models.py --wan2gp /path/to/Wan2GP --ckpts /path/to/ckpts [--tiny --verify]

* ``wan2.1_text2video_1.3B_mbf16.safetensors`` (defaults/t2v_1.3B.json's URL): ``models.wan.modules.model.WanModel``
  with ``models/wan/configs/t2v_1.3B.json`` (the config any2video passes to ``offload.fast_load_transformers_model``);
* ``umt5-xxl/models_t5_umt5-xxl-enc-bf16.safetensors``: ``models.wan.modules.t5.umt5_xxl(encoder_only=True)``,
  Wan's own key layout (``_preprocess_umt5_state_dict`` keeps it as is); the bf16 file is the one
  ``get_model_filename`` picks when wgp_config.json says ``"text_encoder_quantization": "bf16"`` (the run script
  writes that: the default int8 pick is a quanto file, which this script does not write);
* ``umt5-xxl/`` tokenizer files: a SentencePiece unigram model trained here on a few sentences, saved through
  transformers' ``T5TokenizerFast`` (spiece.model, tokenizer.json, tokenizer_config.json, special_tokens_map.json);
* ``Wan2.1_VAE.safetensors``: ``models.wan.modules.vae.WanVAE_`` with ``_video_vae``'s config (dim 96, z_dim 16);
* empty placeholders for every other file ``download_models`` / the Wan handler's ``query_model_files`` checks for
  by existence only (``locate_file``) before a t2v load — the shared preprocessors (pose, depth, flow, wav2vec,
  roformer, pyannote, face detection, MatAnyone), the XLM-RoBERTa CLIP and its tokenizer, the 2.1 VAE upscaler —
  so that nothing is downloaded; a t2v generation never opens them.

Weights: normal(0, 0.02) (norm weights 1, biases 0), in the dtypes the classes declare for bf16 models (float32
buffers kept). ``--tiny`` writes the same keys with small dimensions (CPU tests); ``--verify`` loads every file
back through mmgp's ``offload.load_model_data`` into the class built on the meta device, the way Wan2GP does, and
checks that every parameter was filled. Needs Wan2GP's import-time dependencies (torch, mmgp, transformers,
sentencepiece); without a GPU, CUDA queries made at import are answered (``--cpu``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MODEL_FILE = "wan2.1_text2video_1.3B_mbf16.safetensors"
T5_FILE = "umt5-xxl/models_t5_umt5-xxl-enc-bf16.safetensors"
VAE_FILE = "Wan2.1_VAE.safetensors"
PLACEHOLDERS = [  # wgp.query_core_shared_model_files + MatAnyone v1 + wan_handler.query_model_files (t2v)
    "pose/dw-ll_ucoco_384.onnx", "pose/yolox_l.onnx", "scribble/netG_A_latest.pth", "flow/raft-things.pth",
    "depth/depth_anything_v2_vitl.pth",
    *(f"wav2vec/{f}" for f in ("config.json", "feature_extractor_config.json", "model.safetensors",
                               "preprocessor_config.json", "special_tokens_map.json", "tokenizer_config.json",
                               "vocab.json")),
    *(f"chinese-wav2vec2-base/{f}" for f in ("config.json", "pytorch_model.bin", "preprocessor_config.json")),
    "roformer/model_bs_roformer_ep_317_sdr_12.9755.ckpt", "roformer/model_bs_roformer_ep_317_sdr_12.9755.yaml",
    "roformer/download_checks.json",
    "pyannote/pyannote_model_wespeaker-voxceleb-resnet34-LM.bin", "pyannote/pytorch_model_segmentation-3.0.bin",
    "det_align/detface.pt",
    "mask/sam_vit_h_4b8939_fp16.safetensors", "mask/matanyone.safetensors", "mask/config.json",
    *(f"xlm-roberta-large/{f}" for f in ("models_clip_open-clip-xlm-roberta-large-vit-huge-14-bf16.safetensors",
                                         "sentencepiece.bpe.model", "special_tokens_map.json", "tokenizer.json",
                                         "tokenizer_config.json")),
    "Wan2.1_VAE_upscale2x_imageonly_real_v1.safetensors",
]
TINY_WAN = {"dim": 64, "ffn_dim": 128, "num_heads": 2, "num_layers": 2, "text_dim": 32}
TINY_T5 = {"vocab_size": 512, "dim": 32, "dim_attn": 32, "dim_ffn": 64, "num_heads": 2, "encoder_layers": 2}
TINY_VAE = {"dim": 8}


def fake_cuda() -> None:
    """Answer the CUDA queries Wan2GP's modules make at import when there is no GPU (CPU tests)."""
    import torch

    if torch.cuda.is_available():
        return
    props = types.SimpleNamespace(total_memory=80 << 30, name="cpu", major=9, minor=0, multi_processor_count=1)
    torch.cuda.get_device_capability = lambda *a, **k: (9, 0)
    torch.cuda.get_device_properties = lambda *a, **k: props
    torch.cuda.get_device_name = lambda *a, **k: "cpu"
    torch.cuda.current_device = lambda *a, **k: "cpu"


def import_wan(root: Path) -> Any:
    sys.path.insert(0, str(HERE / "standins"))
    sys.path.insert(0, str(root))
    os.chdir(root)
    from models.wan.modules import model, t5, vae

    return types.SimpleNamespace(model=model, t5=t5, vae=vae)


def build(wan: Any, tiny: bool) -> dict[str, Any]:
    """Wan2GP's three modules on the meta device (no memory), as the loader builds them before filling them."""
    import torch

    config = json.loads(Path("models/wan/configs/t2v_1.3B.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        transformer = wan.model.WanModel(**{**config, **(TINY_WAN if tiny else {})})
        encoder = wan.t5.umt5_xxl(encoder_only=True, return_tokenizer=False, dtype=torch.bfloat16, device="meta",
                                  **(TINY_T5 if tiny else {}))
        autoencoder = wan.vae.WanVAE_(**{"dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                                         "attn_scales": [], "temperal_downsample": [False, True, True],
                                         "dropout": 0.0, **(TINY_VAE if tiny else {})})
    return {MODEL_FILE: transformer, T5_FILE: encoder, VAE_FILE: autoencoder}


def random_state(module: Any, dtype: Any, seed: int) -> dict[str, Any]:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"  # 5.7B normal draws: seconds on a GPU
    gen = torch.Generator(device).manual_seed(seed)
    out: dict[str, Any] = {}
    for name, t in list(module.state_dict().items()):
        kind = t.dtype if t.dtype in (torch.float32,) and "weight" not in name and "bias" not in name else dtype
        if not t.is_floating_point():
            out[name] = torch.zeros(t.shape, dtype=t.dtype)
        elif name.endswith("bias"):
            out[name] = torch.zeros(t.shape, dtype=kind)
        elif t.dim() == 1 and ("norm" in name or name.endswith(".weight")):
            out[name] = torch.ones(t.shape, dtype=kind)
        else:
            out[name] = (torch.randn(t.shape, generator=gen, dtype=torch.float32, device=device) * 0.02).to(kind).cpu()
    return out


def write_tokenizer(folder: Path, vocab: int) -> None:
    """A SentencePiece unigram model trained on a few sentences, saved as transformers' T5TokenizerFast (what
    Wan2GP's HuggingfaceTokenizer loads with AutoTokenizer)."""
    import io

    import sentencepiece as spm
    from transformers import T5TokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    text = ("a red fox runs through the snow at dawn\nthe camera pans over a quiet lake\n"
            "a cat walks along a wall in the rain\nslow motion waves crash on black rocks\n") * 50
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text.splitlines()), model_writer=model,
                                   vocab_size=min(vocab, 200), model_type="unigram", pad_id=0, eos_id=1,
                                   unk_id=2, bos_id=-1, hard_vocab_limit=False)
    (folder / "spiece.model").write_bytes(model.getvalue())
    T5TokenizerFast(vocab_file=str(folder / "spiece.model"), extra_ids=0).save_pretrained(str(folder))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wan2gp", required=True, type=Path, help="the Wan2GP checkout (its classes build the models)")
    ap.add_argument("--ckpts", required=True, type=Path, help="Wan2GP's ckpts folder to write into")
    ap.add_argument("--tiny", action="store_true", help="small dimensions, same keys (CPU tests)")
    ap.add_argument("--verify", action="store_true", help="load every file back through mmgp into the meta model")
    ap.add_argument("--cpu", action="store_true", help="answer Wan2GP's import-time CUDA queries (no GPU)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ckpts = args.ckpts.resolve()
    if args.cpu:
        fake_cuda()
    import torch
    from safetensors.torch import save_file

    wan = import_wan(args.wan2gp.resolve())
    t0 = time.time()
    modules = build(wan, args.tiny)
    for i, (name, module) in enumerate(modules.items()):
        path = ckpts / name
        path.parent.mkdir(parents=True, exist_ok=True)
        state = random_state(module, torch.bfloat16, args.seed + i)
        save_file(state, str(path), metadata={"format": "pt", "comfy_worker": "random weights (write_models.py)"})
        size = sum(t.numel() * t.element_size() for t in state.values())
        print(f"write_models: {name}: {len(state)} tensors, {size / 2**30:.2f} GiB ({time.time() - t0:.0f} s)")
        del state
    write_tokenizer(ckpts / "umt5-xxl", TINY_T5["vocab_size"] if args.tiny else 256384)
    for rel in PLACEHOLDERS:
        (ckpts / rel).parent.mkdir(parents=True, exist_ok=True)
        (ckpts / rel).touch()
    print(f"write_models: tokenizer and {len(PLACEHOLDERS)} placeholders; {time.time() - t0:.0f} s in all")
    if args.verify:
        from mmgp import offload

        fresh = build(wan, args.tiny)
        for name, module in fresh.items():
            offload.load_model_data(module, str(ckpts / name), writable_tensors=False, default_dtype=None)
            left = [n for n, p in module.named_parameters() if p.is_meta]
            assert not left, f"{name}: {len(left)} parameters not filled by the file, e.g. {left[:3]}"
            print(f"write_models: verified {name}: every parameter of {type(module).__name__} loaded by mmgp")
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(ckpts / "umt5-xxl"))
        print(f"write_models: tokenizer {type(tok).__name__}: {tok('a red fox').input_ids}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
