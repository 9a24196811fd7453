"""ComfyClient against a stand-in of a *current* ComfyUI (tests/standins/comfyui_current.py): client-chosen
prompt_id, completion by execution_success, history briefly {} after it, core SaveVideo's output shape."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from comfy_worker.engine import ComfyClient, events
from comfy_worker.errors import ExecutionFailed
from tests.standins.comfyui_current import VIDEO_BYTES, CurrentComfyStandin


@pytest.fixture(params=[True, False], ids=["with-executing-null", "success-only"])
async def standin(request: pytest.FixtureRequest) -> AsyncIterator[CurrentComfyStandin]:
    server = CurrentComfyStandin(history_lag=3, send_executing_null=request.param)
    await server.start()
    yield server
    await server.stop()


async def test_prompt_id_success_and_lagging_history(standin: CurrentComfyStandin, tmp_path: Path) -> None:
    wanted = str(uuid.uuid4())
    seen: list[events.Event] = []
    async with ComfyClient(standin.base_url) as client:
        pid = await client.queue_prompt({"1": {"class_type": "SaveVideo", "inputs": {}}}, prompt_id=wanted)
        assert pid == wanted
        assert standin.received[0]["client_id"] == client.client_id
        hist = await client.wait(pid, on_event=seen.append, deadline_s=20)
        assert standin.history_reads[pid] > standin.history_lag  # it retried through the {} answers
        assert hist.status_str == "success"
        (item,) = await client.download_outputs(hist, tmp_path)
    assert (item.kind, item.subfolder, item.content_type) == ("video", "video", "video/mp4")
    assert item.path.read_bytes() == VIDEO_BYTES
    kinds = [type(e) for e in seen]
    assert events.ProgressState in kinds and events.ExecutionSuccess in kinds


async def test_execution_error_with_timestamp(standin: CurrentComfyStandin) -> None:
    async with ComfyClient(standin.base_url) as client:
        pid = await client.queue_prompt({"1": {"class_type": "Fail", "inputs": {}}})
        with pytest.raises(ExecutionFailed) as info:
            await client.wait(pid, deadline_s=20)
    assert info.value.details["node_type"] == "Fail"
    assert info.value.details["traceback"][-1] == "RuntimeError: fail node\n"
