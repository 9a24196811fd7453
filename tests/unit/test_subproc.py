"""subproc.run_tool with real child processes: what it returns, and that a cancelled or timed-out caller never
leaves the tool running (it is killed and reaped before the exception goes on)."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
from typing import Any

import pytest

from comfy_worker import subproc
from comfy_worker.errors import ExecutionFailed
from comfy_worker.subproc import find_tool, run_tool

SLEEPER = "import time; time.sleep(60)"


async def test_exit_status_and_both_streams():
    script = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    done = await run_tool([sys.executable, "-c", script])
    assert (done.returncode, done.stdout.strip(), done.stderr.strip()) == (3, b"out", b"err")


async def test_stdout_not_captured_when_asked():
    done = await run_tool([sys.executable, "-c", "print('x' * 100000)"], capture_stdout=False)
    assert done.returncode == 0 and done.stdout == b""


async def test_a_missing_program_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        await run_tool([str(tmp_path / "no-such-tool")])


@pytest.fixture
def spawned(monkeypatch) -> tuple[list[Any], asyncio.Event]:
    """The real asyncio.create_subprocess_exec, with each process it makes kept and an event set once it exists."""
    procs: list[Any] = []
    made = asyncio.Event()
    real = asyncio.create_subprocess_exec

    async def keep(*args: Any, **kw: Any) -> Any:
        proc = await real(*args, **kw)
        procs.append(proc)
        made.set()
        return proc

    monkeypatch.setattr(subproc.asyncio, "create_subprocess_exec", keep)
    return procs, made


async def test_cancelling_the_caller_kills_and_reaps_the_tool(spawned):
    procs, made = spawned
    task = asyncio.create_task(run_tool([sys.executable, "-c", SLEEPER]))
    await made.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert procs[0].returncode == -signal.SIGKILL  # killed, and reaped before the cancellation went on


async def test_a_time_limit_kills_and_reaps_the_tool(spawned):
    procs, _ = spawned
    with pytest.raises(TimeoutError):
        await run_tool([sys.executable, "-c", SLEEPER], timeout_s=0.5)
    assert procs[0].returncode == -signal.SIGKILL


def test_find_tool_gives_the_path_or_names_what_needed_it_and_the_fix(tmp_path, monkeypatch):
    assert find_tool("ffmpeg", what="join") == shutil.which("ffmpeg")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ExecutionFailed) as info:
        find_tool("ffprobe", what="probe clip.mp4")
    assert str(info.value) == "probe clip.mp4: ffprobe not found on PATH (install ffmpeg)"
    assert info.value.details == {"tool": "ffprobe"} and not info.value.retryable
