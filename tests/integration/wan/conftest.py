"""A session-scoped real ComfyUI 0.3.64 (CPU, placeholder model files) for the Wan 2.2 builder and handler tests.

Without the installation (scripts/setup_test_comfyui_0364.sh) the tests are skipped with a hint locally, and
fail in CI (CI=true), where scripts/install.sh must have installed it.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from comfy_worker.engine import ComfyClient
from comfy_worker.store.postgres import PostgresStore
from tests.comfy_server import comfy_test_home, free_port, remove_workdir, stop_test_comfyui
from tests.comfy_server_0364 import comfy_0364_available, place_models, start_comfyui_0364
from tests.integration.daemon.conftest import Harness
from tests.integration.engine.conftest import skip_or_fail


@dataclass
class Comfy0364:
    base_url: str
    workdir: Path

    @property
    def input_dir(self) -> Path:
        return self.workdir / "input"

    def place_models(self, graph: dict[str, Any]) -> list[Path]:
        return place_models(self.workdir, graph)

    def remove_models(self) -> None:
        for folder in (self.workdir / "models").iterdir():
            for f in folder.iterdir():
                f.unlink()


@contextlib.contextmanager
def running_0364(extra_args: list[str] | None = None) -> Iterator[Comfy0364]:
    """A ComfyUI 0.3.64 of its own for the duration (``extra_args``: more of ComfyUI's arguments)."""
    if not comfy_0364_available():
        skip_or_fail(f"ComfyUI 0.3.64 not installed in {comfy_test_home()}: run scripts/setup_test_comfyui_0364.sh")
    proc, base_url = start_comfyui_0364(free_port(), extra_args=extra_args)
    try:
        yield Comfy0364(base_url, proc.workdir)  # type: ignore[attr-defined]
    finally:
        stop_test_comfyui(proc)
        remove_workdir(proc)


@contextlib.asynccontextmanager
async def connected(base_url: str) -> AsyncIterator[ComfyClient]:
    client = ComfyClient(base_url)
    await client.connect()
    try:
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def daemon_harness(pg_dsn: str, base_url: str, storage_dir: Path) -> AsyncIterator[Harness]:
    """The daemon test harness on real Postgres against the ComfyUI at ``base_url`` (the test starts its daemons)."""
    store = PostgresStore(pg_dsn)
    await store.connect()
    h = Harness(pg_dsn, store, storage_dir, base_url)
    try:
        yield h
    finally:
        await h.stop_all()
        await store.close()


@pytest.fixture(scope="session")
def comfyui_0364() -> Iterator[Comfy0364]:
    with running_0364() as server:
        yield server


@pytest.fixture
async def comfy64(comfyui_0364: Comfy0364) -> AsyncIterator[ComfyClient]:
    async with connected(comfyui_0364.base_url) as client:
        yield client


@pytest.fixture
async def harness64(pg_dsn: str, comfyui_0364: Comfy0364, tmp_path: Path) -> AsyncIterator[Harness]:
    async with daemon_harness(pg_dsn, comfyui_0364.base_url, tmp_path / "storage") as h:
        yield h


def ffmpeg_media(dest: Path, kind: str, seconds: float = 1.0) -> Path:
    """A real small file made with ffmpeg: a 64x64 PNG ("image") or a sine tone WAV ("audio")."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = ["-f", "lavfi", "-i", "color=c=red:s=64x64", "-frames:v", "1"] if kind == "image" else [
        "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"
    ]  # fmt: skip
    assert shutil.which("ffmpeg"), "ffmpeg is required (scripts/install.sh installs it)"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *src, str(dest)], check=True)
    return dest
