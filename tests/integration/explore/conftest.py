"""Fixtures for the exploration suite against the real test ComfyUI: one small local batch per module."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfy_worker.explore.batch import BatchResult, run_batch
from comfy_worker.explore.batch_config import load_config
from comfy_worker.explore.runners import LocalRunner
from tests.conftest import run_sync
from tests.integration.engine.conftest import ComfyServer, comfyui_server  # noqa: F401 - fixture re-export
from tests.integration.explore.workflows import write_batch


def sheet_config(tmp: Path) -> Path:
    """Eight runs over denoise, colour and a string parameter (the output prefix), with seeds."""
    return write_batch(tmp, num_samples=8, parameters={
        "denoise": {"path": "nodes.3.inputs.denoise", "type": "continuous", "min": 0.2, "max": 1.0},
        "color": {"path": "nodes.2.inputs.color", "type": "values", "values": [4227264, 12599424, 8437824, 2121888]},
        "prefix": {"path": "nodes.5.inputs.filename_prefix", "type": "values", "values": ["explore/a", "explore/b"]},
        "seed": {"path": "nodes.3.inputs.seed", "type": "random_seed"},
    })


@pytest.fixture(scope="module")
def local_batch(comfyui_server: ComfyServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatchResult]:  # noqa: F811
    """A finished local batch of eight runs (made once per module)."""
    tmp = tmp_path_factory.mktemp("sheet-batch")
    cfg = load_config(sheet_config(tmp))

    async def go() -> BatchResult:
        return await run_batch(cfg, LocalRunner(comfyui_server.base_url), out=io.StringIO())

    result = run_sync(go())
    assert result.complete == 8, result
    yield result
