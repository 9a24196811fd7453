"""comfy-worker's test node pack: small, CPU-cheap nodes the older test ComfyUI lacks.

Loaded by ComfyUI as a custom node package (tests/comfy_nodes is registered as a ``custom_nodes`` folder by
scripts/setup_test_comfyui.sh and tests/comfy_server.py). Never imported by the worker or by pytest.

Nodes (all prefixed ``CW``):
  CWSaveVideoMP4   IMAGE frames -> mp4 (ffmpeg subprocess), listed under "gifs" like VideoHelperSuite
  CWLoadVideo      a video file in ComfyUI's input dir -> IMAGE frames (ffmpeg), validated like LoadImage
  CWSaveAudioWav   a short sine tone -> wav, listed under "audio"
  CWRaise          raises at run time (execution_error tests)
  CWSlow           sleeps in small steps with a ProgressBar; interruptible
  CWFakeSampler    LATENT + reference IMAGE -> (LATENT, IMAGE frames), deterministic (Wan-like chain tests)
  Chain stand-ins for the Wan 2.2 HIGH/LOW custom nodes (prompt_runner tests; read/write by absolute path):
  CWInt (INTConstant), CWTextEncode, CWChunkSampler (HIGH: noise -> latent; LOW: refines ``samples``),
  CWChunkDecode (latent -> 32x32 frames), CWSaveLatentWithPath, CWLoadLastLatent, CWLoadImageFromPath
  CWLoadImage      an image in ComfyUI's input dir, subfolders included (per-task uploads) -> IMAGE
  CWNoiseImage     IMAGE -> seeded noise of width x height tinted by it (a ~1 MB PNG at 600 x 600: bench_soak)
Latents to/from files: core SaveLatent and LoadLatent.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
