"""Fixtures for running the real daemon in-process against real Postgres, a real ComfyUI and local storage (or
the object store a STORAGE_URL in ``Harness.settings`` names; its credentials come from os.environ)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from comfy_worker.cli import build_registry
from comfy_worker.config import Settings, load_settings
from comfy_worker.daemon import Daemon
from comfy_worker.models import NewTask, Task
from comfy_worker.storage import open_storage
from comfy_worker.store.postgres import PostgresStore
from tests.integration.engine.conftest import ComfyServer, comfyui_server  # noqa: F401 - fixture re-export

FAST = {
    "HEARTBEAT_INTERVAL": "0.3",
    "LEASE_SECONDS": "10",
    "POLL_INTERVAL": "0.2",
    "STALE_CHECK_INTERVAL": "0.5",
    "PROGRESS_INTERVAL_S": "0.2",
    "SHUTDOWN_GRACE_S": "5",
    "ALLOW_PRIVATE_URLS": "true",
    "LOG_FORMAT": "json",
}


async def wait_task(
    store: PostgresStore,
    task_id: str,
    *,
    statuses: tuple[str, ...] = ("complete", "failed", "cancelled"),
    timeout: float = 90,
) -> Task:
    """Poll the task row (the observable outcome) until it reaches one of ``statuses``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        task = await store.get_task(task_id)
        if task.status in statuses:
            return task
        if loop.time() > deadline:
            raise AssertionError(f"task {task_id} still {task.status} after {timeout}s: {task.error}")
        await asyncio.sleep(0.1)


@dataclass
class Harness:
    dsn: str
    store: PostgresStore
    storage_dir: Path
    comfy_url: str
    daemons: list[tuple[Daemon, asyncio.Task[int]]] = field(default_factory=list)

    def settings(self, **env: str) -> Settings:
        base = {
            **FAST,
            "DATABASE_URL": self.dsn,
            "COMFY_URL": self.comfy_url,
            "LOCAL_STORAGE_DIR": str(self.storage_dir),
            "PROFILES_DIR": str(Path(__file__).parents[1] / "prompt_runner" / "chain"),  # the CPU chain profiles
        }
        return load_settings({**base, **env})

    async def start_daemon(
        self,
        worker_id: str = "comfy-worker-t1",
        settings: Settings | None = None,
        before_start: Callable[[Daemon], None] | None = None,
        **kw: Any,
    ) -> Daemon:
        settings = settings or self.settings()
        store = PostgresStore(self.dsn)
        daemon = Daemon(
            settings,
            store=store,
            storage=open_storage(settings),  # STORAGE_URL in the settings: the store it names
            registry=build_registry(settings, worker_id=worker_id, only=kw.pop("only", ())),
            worker_id=worker_id,
            **kw,
        )
        if before_start is not None:
            before_start(daemon)
        await daemon.start()
        self.daemons.append((daemon, asyncio.create_task(daemon.run())))
        return daemon

    async def stop_all(self) -> None:
        for daemon, runner in self.daemons:
            if not runner.done():
                daemon.request_stop("test_end")
        for _daemon, runner in self.daemons:
            await asyncio.wait_for(runner, 60)

    async def submit(self, workflow: dict[str, Any], **params: Any) -> str:
        return (
            await self.store.enqueue(
                NewTask("comfy", {"workflow": workflow, **params}, max_attempts=params.pop("max_attempts", 3))
            )
        ).task_id


@pytest.fixture
async def harness(pg_dsn: str, comfyui_server: ComfyServer, tmp_path: Path) -> AsyncIterator[Harness]:  # noqa: F811
    store = PostgresStore(pg_dsn)
    await store.connect()
    h = Harness(pg_dsn, store, tmp_path / "storage", comfyui_server.base_url)
    try:
        yield h
    finally:
        await h.stop_all()
        await store.close()


@pytest.fixture
async def http_files(tmp_path: Path) -> AsyncIterator[Callable[[str, bytes], str]]:
    """A real HTTP server on 127.0.0.1 serving files the test puts there: ``url = put(name, data)``."""
    root = tmp_path / "www"
    root.mkdir()
    app = web.Application()
    app.router.add_static("/", root)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def put(name: str, data: bytes) -> str:
        (root / name).write_bytes(data)
        return f"http://127.0.0.1:{port}/{name}"

    yield put
    await runner.cleanup()
