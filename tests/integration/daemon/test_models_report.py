"""A worker started with MODELS_MANIFEST reports the model files it lacks in its heartbeat metadata."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.daemon.conftest import Harness

pytestmark = pytest.mark.comfyui


async def test_missing_models_are_in_the_workers_metadata(harness: Harness, tmp_path: Path) -> None:
    manifest = tmp_path / "models.yaml"
    manifest.write_text(
        json.dumps(
            {
                "models": [
                    {"name": "here.safetensors", "folder": "vae", "groups": ["g"]},
                    {"name": "gone.safetensors", "folder": "loras", "groups": ["g"]},
                ]
            }
        )
    )
    (tmp_path / "models" / "vae").mkdir(parents=True)
    (tmp_path / "models" / "vae" / "here.safetensors").write_bytes(b"weights")
    settings = harness.settings(MODELS_MANIFEST=str(manifest), MODELS_DIR=str(tmp_path / "models"))
    await harness.start_daemon("comfy-worker-models", settings=settings)
    snap = await harness.store.fleet_snapshot()
    meta = next(w for w in snap["workers"] if w["id"] == "comfy-worker-models")["metadata"]
    assert meta["models_missing"] == ["loras/gone.safetensors"]
    assert meta["models_corrupt"] == []
    assert meta["healthy"] is True
