"""The real warm-up graph (daemon/warm.py: the builders' default ti2v graph at 64x64, one frame, one step) run by
ComfyUI 0.3.64's own Wan nodes on toy-size random-weight models (bench/gpu/make_models.py --tiny): it loads the
5B, UMT5 and the Wan 2.2 VAE, executes to the end and leaves no files or history behind."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from comfy_worker.builders.params import DEFAULTS
from comfy_worker.config import load_settings
from comfy_worker.daemon.warm import WARMUP_PREFIX, WarmStart
from comfy_worker.engine import ComfyClient
from comfy_worker.store.postgres import PostgresStore
from tests.comfy_server_0364 import comfy_0364_paths
from tests.integration.wan.conftest import Comfy0364

pytestmark = pytest.mark.comfyui
REPO = Path(__file__).resolve().parents[3]


async def test_ti2v_warm_up_graph_runs_on_the_real_nodes(
    comfyui_0364: Comfy0364, comfy64: ComfyClient, pg_dsn: str
) -> None:
    python, tree = comfy_0364_paths()
    models = comfyui_0364.workdir / "models"
    d = DEFAULTS["comfyui_ti2v"]
    made = [models / "diffusion_models" / d["diffusion_model"], models / "text_encoders" / d["text_encoder"],
            models / "vae" / d["vae_model"]]  # fmt: skip
    for f in made:  # placeholders other tests may have left: make_models writes only what is missing
        f.unlink(missing_ok=True)
    out = subprocess.run(
        [str(python), str(REPO / "bench/gpu/make_models.py"), "--tiny", "--comfy", str(tree), "--models-dir",
         str(models), "ti2v_5b", "vae22", "umt5"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    store = PostgresStore(pg_dsn)
    await store.connect()
    try:
        settings = load_settings({"COMFY_URL": comfyui_0364.base_url, "WARM_UP": "true",
                                  "COMFY_OUTPUT_DIR": str(comfyui_0364.workdir / "output"),
                                  "TASK_TYPES": "comfyui_ti2v"})  # fmt: skip
        warm = WarmStart(settings, ["comfyui_ti2v"])
        outcome = await warm.warm_up(SimpleNamespace(started=True, client=comfy64), store)
        assert outcome == "done"
        assert not list((comfyui_0364.workdir / "output" / WARMUP_PREFIX).rglob("*.mp4"))
    finally:
        await store.close()
        for f in made:
            f.unlink(missing_ok=True)
