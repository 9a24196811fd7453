"""ComfySupervisor: start-up errors, output capture, stop escalation, and a real ComfyUI killed mid-prompt."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest
from aiohttp import web

from comfy_worker.config import load_settings
from comfy_worker.daemon.warm import TORCH_LINE
from comfy_worker.engine import ComfyClient, ComfySupervisor, events
from comfy_worker.engine.frames import NODE
from comfy_worker.errors import EngineGone, EngineStartupError, EngineUnavailable
from tests.comfy_server import comfy_args, comfy_test_paths, free_port

from .conftest import require_test_comfyui


def settings(**env: str):
    base = {"COMFY_PORT": str(free_port()), "COMFY_STARTUP_TIMEOUT": "20", "COMFY_RESTART_MAX": "3"}
    return load_settings({**base, **env}, dotenv=None)


def fake_comfy(tmp_path: Path, body: str) -> Path:
    """A directory whose main.py is ``body`` (a stand-in process for lifecycle tests, not ComfyUI)."""
    (tmp_path / "main.py").write_text(textwrap.dedent(body))
    return tmp_path


# A tiny HTTP server answering /system_stats, parsing --port like ComfyUI; ignores SIGTERM if asked.
SERVES = """
    import http.server, json, signal, sys
    port = int(sys.argv[sys.argv.index("--port") + 1])
    if "--ignore-term" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(json.dumps({"system": {}}).encode())
        def log_message(self, *a): pass
    print("fake comfy listening", port, flush=True)
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"COMFY_PATH": "/nonexistent/comfyui"}, "COMFY_PATH=/nonexistent/comfyui does not exist"),
        ({"COMFY_PATH": "{tmp}"}, "has no main.py"),
        (
            {"COMFY_PATH": "{tmp_main}", "COMFY_PYTHON": "/nonexistent/python"},
            "COMFY_PYTHON=/nonexistent/python",
        ),
        ({}, "COMFY_PATH is not set"),
    ],
)
async def test_startup_errors_name_the_setting(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    (tmp_path / "with_main").mkdir()
    (tmp_path / "with_main" / "main.py").write_text("")
    env = {k: v.format(tmp=tmp_path, tmp_main=tmp_path / "with_main") for k, v in env.items()}
    sup = ComfySupervisor(settings(**env))
    with pytest.raises(EngineStartupError, match=expected):
        await sup.start()


async def test_exit_during_startup_carries_log_tail(tmp_path: Path) -> None:
    path = fake_comfy(
        tmp_path,
        """
        import sys
        print("loading custom nodes", flush=True)
        print("ImportError: no module named torch", file=sys.stderr, flush=True)
        sys.exit(3)
    """,
    )
    sup = ComfySupervisor(settings(COMFY_PATH=str(path), COMFY_PYTHON=sys.executable))
    with pytest.raises(EngineStartupError) as info:
        await sup.start()
    assert info.value.details["exit_code"] == 3
    assert "ImportError: no module named torch" in info.value.details["log_tail"]
    assert "loading custom nodes" in info.value.details["log_tail"]
    assert "no module named torch" in str(info.value)


async def test_output_is_read_and_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    path = fake_comfy(tmp_path, SERVES)
    sup = ComfySupervisor(settings(COMFY_PATH=str(path), COMFY_PYTHON=sys.executable, COMFY_ARGS="--ignore-term"))
    await sup.start()
    pid = sup.pid
    assert sup.healthy and pid is not None
    assert any("fake comfy listening" in line for line in sup.tail)
    await sup.stop(grace_s=0.5)  # SIGTERM ignored → SIGKILL
    assert sup.pid is None and not sup.healthy
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not sup.died.is_set()  # a requested stop is not a death


async def test_line_watchers_see_every_line_and_a_failing_one_does_not_stop_the_pipe(tmp_path: Path) -> None:
    path = fake_comfy(tmp_path, SERVES)
    sup = ComfySupervisor(settings(COMFY_PATH=str(path), COMFY_PYTHON=sys.executable))
    seen: list[str] = []

    def broken(line: str) -> None:
        raise RuntimeError("a watcher's bug")

    sup.line_watchers += [broken, seen.append]
    await sup.start()
    try:
        assert any("fake comfy listening" in line for line in seen)
        assert seen == list(sup.tail)  # each line, in order, as the tail got it
    finally:
        await sup.stop(grace_s=2)


async def test_restarts_after_death_until_restart_max(tmp_path: Path) -> None:
    path = fake_comfy(tmp_path, SERVES)
    exits: list[int | None] = []
    sup = ComfySupervisor(
        settings(COMFY_PATH=str(path), COMFY_PYTHON=sys.executable), on_exit=exits.append, backoff_base_s=0.05
    )
    await sup.start()
    try:
        first = sup.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await asyncio.wait_for(sup.died.wait(), 10)
        assert exits == [-signal.SIGKILL]
        await asyncio.wait_for(sup.ensure_running(), 30)
        assert sup.healthy and sup.pid not in (None, first) and sup.restarts == 1
        # main.py now fails at once: restarts stop after COMFY_RESTART_MAX in a row.
        (path / "main.py").write_text("raise SystemExit(1)\n")
        os.kill(sup.pid, signal.SIGKILL)
        await asyncio.wait_for(sup.died.wait(), 10)
        with pytest.raises(EngineStartupError, match="restarts in a row"):
            await asyncio.wait_for(sup.ensure_running(), 30)
    finally:
        await sup.stop(grace_s=2)


async def test_attach_mode_has_no_process(tmp_path: Path) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", textwrap.dedent(SERVES), "--port", str(port), stdout=asyncio.subprocess.DEVNULL
    )
    try:
        sup = ComfySupervisor(settings(COMFY_URL=f"http://127.0.0.1:{port}/"))
        await sup.start()
        assert sup.base_url == f"http://127.0.0.1:{port}" and sup.pid is None and sup.healthy
        await sup.ensure_running()
        await sup.stop()
        assert proc.returncode is None  # attached: never ours to stop
    finally:
        proc.kill()
        await proc.wait()


@pytest.mark.comfyui
async def test_comfy_gc_freeze_freezes_the_launched_comfyui_after_its_post_prompt_collection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_test_comfyui()
    python, tree = comfy_test_paths()
    monkeypatch.setenv("COMFY_WORKER_GC_FREEZE_MIN_S", "0")  # a CPU test server's collections are fast
    sup = ComfySupervisor(settings(COMFY_PATH=str(tree), COMFY_PYTHON=str(python), COMFY_ARGS=" ".join(
        comfy_args(tmp_path)), COMFY_STARTUP_TIMEOUT="120", COMFY_GC_FREEZE="true", VIDEO_ENCODE="comfyui"))
    await sup.start()
    try:
        assert any("comfy_worker_gc: on" in line for line in sup.tail)
        async with ComfyClient(sup.base_url) as client:
            assert NODE in await client.object_info()  # the package is loaded for the freezer even so
            wf = {
                "1": {"class_type": "CWSlow", "inputs": {"seconds": 0.2, "steps": 2}},
                "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
            }
            hist = await client.wait(await client.queue_prompt(wf), deadline_s=60)
            assert hist.status_str == "success"
        deadline = asyncio.get_running_loop().time() + 30
        while not any("comfy_worker_gc: froze" in line for line in sup.tail):  # after ComfyUI's gc.collect()
            assert asyncio.get_running_loop().time() < deadline, sup.log_tail(20)
            await asyncio.sleep(0.1)
    finally:
        await sup.stop(grace_s=10)


@pytest.mark.comfyui
@pytest.mark.slow
async def test_real_comfyui_killed_mid_prompt_is_restarted(tmp_path: Path) -> None:
    require_test_comfyui()
    python, tree = comfy_test_paths()
    args = " ".join(comfy_args(tmp_path))
    sup = ComfySupervisor(
        settings(COMFY_PATH=str(tree), COMFY_PYTHON=str(python), COMFY_ARGS=args, COMFY_STARTUP_TIMEOUT="120"),
        backoff_base_s=0.1,
    )
    await sup.start()
    try:
        assert any("Starting server" in line or "To see the GUI" in line for line in sup.tail)
        # WARM_PREFETCH_START=torch waits for this line (daemon/warm.py): ComfyUI 0.3.64 prints it on the CPU too
        assert any(line.startswith(TORCH_LINE) for line in sup.tail)
        first_pid = sup.pid
        async with ComfyClient(sup.base_url, reconnect_grace_s=5) as client:
            assert NODE in await client.object_info()  # the worker's node folder, loaded as the supervisor launched it
            assert not [line for line in sup.tail if "IMPORT FAILED" in line]
            assert not [line for line in sup.tail if "comfy_worker_gc" in line]  # COMFY_GC_FREEZE is off
            killed = asyncio.Event()

            def on_event(e: events.Event) -> None:
                if isinstance(e, events.Progress) and not killed.is_set():
                    killed.set()
                    os.kill(first_pid, signal.SIGKILL)

            wf = {
                "1": {"class_type": "CWSlow", "inputs": {"seconds": 30, "steps": 300}},
                "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
            }
            pid = await client.queue_prompt(wf)
            with pytest.raises(EngineUnavailable):
                await client.wait(pid, on_event=on_event, deadline_s=120)
            assert killed.is_set()
            await asyncio.wait_for(sup.ensure_running(), 150)
            assert sup.healthy and sup.pid != first_pid
        async with ComfyClient(sup.base_url) as client:  # the restarted server works
            wf = {
                "1": {"class_type": "CWSlow", "inputs": {"seconds": 0.2, "steps": 2}},
                "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
            }
            hist = await client.wait(await client.queue_prompt(wf), deadline_s=60)
            assert hist.status_str == "success"
    finally:
        await sup.stop(grace_s=10)
    assert sup.pid is None


async def test_a_port_already_in_use_is_refused_naming_comfy_port(tmp_path: Path) -> None:
    """Found on the GPU machine: a ComfyUI left by a killed worker still answered on the port, and the new
    worker adopted it (its own child failed to bind seconds later) and ran every task there."""
    async def answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'HTTP/1.0 200 OK\r\n\r\n{"system": {}}')
        await writer.drain()
        writer.close()

    other = await asyncio.start_server(answer, "127.0.0.1", 0)  # bound before the supervisor looks
    port = other.sockets[0].getsockname()[1]
    try:
        path = fake_comfy(tmp_path, SERVES)
        sup = ComfySupervisor(settings(COMFY_PATH=str(path), COMFY_PYTHON=sys.executable, COMFY_PORT=str(port)))
        with pytest.raises(EngineStartupError, match=f"COMFY_PORT={port}: something already listens"):
            await sup.start()
        assert sup.pid is None  # nothing was launched
    finally:
        other.close()
        await other.wait_closed()


async def test_the_child_dies_with_a_killed_worker(tmp_path: Path) -> None:
    path = fake_comfy(tmp_path, SERVES)
    worker = textwrap.dedent(
        f"""
        import asyncio, sys
        from comfy_worker.config import load_settings
        from comfy_worker.engine import ComfySupervisor
        async def main():
            s = load_settings({{"COMFY_PATH": {str(path)!r}, "COMFY_PYTHON": sys.executable,
                               "COMFY_PORT": "{free_port()}", "COMFY_STARTUP_TIMEOUT": "20"}}, dotenv=None)
            sup = ComfySupervisor(s)
            await sup.start()
            print(sup.pid, flush=True)
            await asyncio.sleep(3600)
        asyncio.run(main())
        """
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", worker, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    child = int((await asyncio.wait_for(proc.stdout.readline(), 30)).decode())
    os.kill(child, 0)  # alive
    proc.kill()  # kill -9: no chance to stop ComfyUI
    await proc.wait()
    for _ in range(100):  # the kernel's parent-death signal arrives at once; allow a loaded machine 10 s
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the worker's ComfyUI outlived it")


class StatsServer:
    """A real HTTP server on 127.0.0.1 answering ``/system_stats`` like ComfyUI (in this process): ``stop()``
    closes the port (connections are refused), ``start()`` opens it again on the same port, and while ``frozen``
    is set it accepts requests but never answers (a busy or stalled server)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.frozen = asyncio.Event()
        self.requests = 0
        self._runner: web.AppRunner | None = None

    async def _stats(self, _request: web.Request) -> web.Response:
        self.requests += 1
        if self.frozen.is_set():
            await asyncio.sleep(3600)
        return web.json_response({"system": {}, "devices": []})

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/system_stats", self._stats)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def test_an_attached_server_that_went_away_is_unreachable_until_it_answers_again() -> None:
    server = StatsServer()
    url = await server.start()
    exits: list[int | None] = []
    sup = ComfySupervisor(settings(COMFY_URL=url, COMFY_STARTUP_TIMEOUT="1"), on_exit=exits.append)
    try:
        await sup.start()
        sup.connection_lost()  # a websocket blip while it answers: nothing happens
        await asyncio.wait_for(sup._check_task, 5)  # type: ignore[arg-type]
        assert sup.healthy and not sup.unreachable and sup.lost is None and exits == []
        await server.stop()
        sup.connection_lost()
        await asyncio.wait_for(sup.died.wait(), 5)
        assert not sup.healthy and sup.unreachable and exits == [None]
        assert sup.lost is not None and sup.lost["url"] == url and sup.lost["reason"] == "connection refused"
        # a task that had nothing in it waits (COMFY_STARTUP_TIMEOUT) and is given up on: released, not failed
        with pytest.raises(EngineGone, match=r"went away \(connection refused\) and did not answer again within 1 s"):
            await sup.ensure_running()
        await server.start()  # the same port
        await asyncio.wait_for(sup.ensure_running(), 15)  # the probe with backoff finds it
        assert sup.healthy and not sup.unreachable and not sup.died.is_set()
        assert sup.lost["reason"] == "connection refused"  # kept: the failed task's story
    finally:
        await sup.stop()
        await server.stop()


async def test_an_attached_server_down_at_start_is_found_once_it_answers() -> None:
    server = StatsServer()  # nothing listens on its port yet
    url = f"http://127.0.0.1:{server.port}"
    exits: list[int | None] = []
    sup = ComfySupervisor(settings(COMFY_URL=url, COMFY_STARTUP_TIMEOUT="1"), on_exit=exits.append)
    try:
        await asyncio.wait_for(sup.start(), 5)  # the worker starts: not ours to wait for, nor to give up on
        assert not sup.healthy and sup.unreachable and not sup.answered and exits == []
        assert sup.lost is not None and sup.lost["reason"] == "connection refused"
        with pytest.raises(EngineGone, match=r"does not answer \(connection refused\) within 1 s"):
            await sup.ensure_running()  # a task claimed meanwhile is released after COMFY_STARTUP_TIMEOUT
        await server.start()
        await asyncio.wait_for(sup._reachable.wait(), 15)  # found by the backoff probe, nobody asking
        assert sup.healthy and sup.answered and not sup.unreachable and exits == []
        await server.stop()  # and a later drop is seen as for a server that was up at start
        sup.connection_lost()
        await asyncio.wait_for(sup.died.wait(), 5)
        assert sup.unreachable and exits == [None]
    finally:
        await sup.stop()
        await server.stop()


async def test_a_failed_probe_never_leaves_an_attached_server_unhealthy_for_good() -> None:
    server = StatsServer()
    url = await server.start()
    exits: list[int | None] = []
    sup = ComfySupervisor(settings(COMFY_URL=url, COMFY_STARTUP_TIMEOUT="1"), on_exit=exits.append)
    try:
        await sup.start()
        await server.stop()
        # ensure_running's own probe finds it gone: went away (as a dropped websocket would tell), not a bare
        # "unhealthy" that no probe and no websocket drop would ever undo
        with pytest.raises(EngineGone, match=r"went away \(connection refused\)"):
            await sup.ensure_running()
        assert sup.unreachable and exits == [None]
        await server.start()
        await asyncio.wait_for(sup._reachable.wait(), 15)
        assert sup.healthy and not sup.unreachable
        await server.stop()
        sup.connection_lost()  # drops count again once it is back
        await asyncio.wait_for(sup.died.wait(), 5)
        assert exits == [None, None]
    finally:
        await sup.stop()
        await server.stop()


async def test_an_attached_server_that_accepts_but_does_not_answer_is_not_gone() -> None:
    server = StatsServer()
    url = await server.start()
    exits: list[int | None] = []
    sup = ComfySupervisor(settings(COMFY_URL=url), on_exit=exits.append)
    try:
        await sup.start()
        server.frozen.set()
        seen = server.requests
        sup.connection_lost()
        for _ in range(200):  # two probes timed out: still alive (busy or stalled), so the task's timers decide
            if server.requests >= seen + 2:
                break
            await asyncio.sleep(0.05)
        assert server.requests >= seen + 2
        assert sup.healthy and not sup.unreachable and exits == [] and sup.lost is None
        server.frozen.clear()
        await asyncio.wait_for(sup._check_task, 10)  # type: ignore[arg-type]
        assert sup.healthy and exits == []
    finally:
        await sup.stop()
        await server.stop()
