"""Session-scoped real ComfyUI (the older CPU test server) for engine tests, reusable by other suites.

``comfyui_server`` starts one server per test session on a free port (``--cpu``, tests/comfy_nodes as
custom nodes, private input/output dirs). Without $COMFY_TEST_HOME (default <repo>/.test-env) the tests are
skipped with a hint — except in CI (CI=true), where a missing server is a failure.

Other suites can reuse it: ``from tests.integration.engine.conftest import comfyui_server, ComfyServer``
(pytest fixtures are picked up by import into a conftest), or call ``tests.comfy_server.start_test_comfyui``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from comfy_worker.engine import ComfyClient
from tests.comfy_server import (
    comfy_test_available,
    comfy_test_home,
    free_port,
    remove_workdir,
    start_test_comfyui,
    stop_test_comfyui,
)


@dataclass
class ComfyServer:
    base_url: str
    workdir: Path
    process: object

    @property
    def input_dir(self) -> Path:
        return self.workdir / "input"

    @property
    def output_dir(self) -> Path:
        return self.workdir / "output"


def skip_or_fail(msg: str) -> None:
    """Skip the test (locally) or fail it (CI, where scripts/install.sh must have installed what is missing)."""
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def require_test_comfyui() -> None:
    """Skip (locally) or fail (CI) when the test ComfyUI is not installed."""
    if not comfy_test_available():
        skip_or_fail(f"test ComfyUI not installed in {comfy_test_home()}: run scripts/setup_test_comfyui.sh")


@pytest.fixture(scope="session")
def comfyui_server() -> Iterator[ComfyServer]:
    require_test_comfyui()
    proc, base_url = start_test_comfyui(free_port())
    try:
        yield ComfyServer(base_url, proc.workdir, proc)  # type: ignore[attr-defined]
    finally:
        stop_test_comfyui(proc)
        remove_workdir(proc)


@pytest.fixture
async def comfy(comfyui_server: ComfyServer) -> AsyncIterator[ComfyClient]:
    """A connected client (its own client_id and websocket) to the session server."""
    client = ComfyClient(comfyui_server.base_url)
    await client.connect()
    try:
        yield client
    finally:
        await client.aclose()
