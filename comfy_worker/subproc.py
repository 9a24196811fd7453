"""Run a tool (ffmpeg, ffprobe) to its end from async code, and never leave it behind.

Every caller wants the same thing: the exit status and what the tool wrote, and, when the task that waits is
cancelled (a cancelled task, a shutdown) or a time limit passes, the tool killed and reaped before the exception
goes on — otherwise ffmpeg keeps running and its pipes are closed only by the garbage collector, after the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Sequence
from dataclasses import dataclass

from comfy_worker.errors import ExecutionFailed


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: bytes
    stderr: bytes


def find_tool(tool: str, *, what: str) -> str:
    """The path of ``tool`` (ffmpeg, ffprobe) on PATH, or ExecutionFailed saying ``what`` needed it and the fix: a
    worker without it is a broken install, said plainly rather than as a FileNotFoundError."""
    exe = shutil.which(tool)
    if exe is None:
        raise ExecutionFailed(f"{what}: {tool} not found on PATH (install ffmpeg)", details={"tool": tool})
    return exe


async def run_tool(args: Sequence[str], *, timeout_s: float | None = None, capture_stdout: bool = True) -> Completed:
    """Run ``args`` (stdin closed; stderr captured; stdout captured unless ``capture_stdout`` is False) and wait
    for it. TimeoutError after ``timeout_s``, CancelledError when cancelled: in both, the process is killed and
    waited for first. FileNotFoundError when the program does not exist."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE if capture_stdout else asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except BaseException:  # TimeoutError, CancelledError: the tool must not outlive its caller
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                proc.kill()
            await asyncio.shield(proc.wait())
        raise
    assert proc.returncode is not None
    return Completed(proc.returncode, out or b"", err or b"")
