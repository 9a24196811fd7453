"""Websocket message parsing (engine/events.py) and history outcomes (engine/history.py), for messages as the
older test server sends them and as current ComfyUI (0.3.6x) sends them."""

from __future__ import annotations

import json

import pytest

from comfy_worker.engine import events as ev
from comfy_worker.engine.history import History, finished, outcome, summarise_node_errors
from comfy_worker.engine.outputs import kind_of, list_outputs
from comfy_worker.errors import ExecutionFailed, ExecutionInterrupted

PID = "5b0f6c1e-3a8d-4d57-9d8c-2f8f2b0e1a11"


def msg(kind: str, data: dict) -> str:
    return json.dumps({"type": kind, "data": data})


def test_current_server_messages() -> None:
    e = ev.parse_message(msg("execution_start", {"prompt_id": PID, "timestamp": 1730000000000}))
    assert isinstance(e, ev.ExecutionStart) and e.prompt_id == PID
    e = ev.parse_message(msg("execution_cached", {"nodes": ["1", 2], "prompt_id": PID, "timestamp": 1}))
    assert isinstance(e, ev.ExecutionCached) and e.nodes == ("1", "2")
    e = ev.parse_message(msg("executing", {"node": "7", "display_node": "7", "prompt_id": PID}))
    assert isinstance(e, ev.Executing) and (e.node, e.display_node) == ("7", "7")
    e = ev.parse_message(msg("progress", {"value": 3, "max": 20, "prompt_id": PID, "node": "7"}))
    assert isinstance(e, ev.Progress) and (e.value, e.max, e.node) == (3, 20, "7")
    e = ev.parse_message(
        msg(
            "progress_state",
            {
                "prompt_id": PID,
                "nodes": {
                    "7": {
                        "value": 3,
                        "max": 20,
                        "state": "running",
                        "node_id": "7",
                        "prompt_id": PID,
                        "display_node_id": "7",
                        "parent_node_id": None,
                        "real_node_id": "7",
                    },
                    "9": {"value": 0, "max": 1, "state": "pending", "node_id": "9"},
                },
            },
        )
    )
    assert isinstance(e, ev.ProgressState)
    assert [(n.node_id, n.value, n.max, n.state) for n in e.nodes] == [
        ("7", 3.0, 20.0, "running"),
        ("9", 0.0, 1.0, "pending"),
    ]
    e = ev.parse_message(
        msg(
            "executed",
            {
                "node": "9",
                "display_node": "9",
                "prompt_id": PID,
                "output": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]},
            },
        )
    )
    assert isinstance(e, ev.Executed) and e.output["images"][0]["filename"] == "a.png"
    e = ev.parse_message(msg("execution_success", {"prompt_id": PID, "timestamp": 1730000001000}))
    assert isinstance(e, ev.ExecutionSuccess) and e.prompt_id == PID
    e = ev.parse_message(msg("executing", {"node": None, "display_node": None, "prompt_id": PID}))
    assert isinstance(e, ev.Executing) and e.node is None and e.prompt_id == PID


def test_errors_and_interrupts() -> None:
    e = ev.parse_message(
        msg(
            "execution_error",
            {
                "prompt_id": PID,
                "node_id": "4",
                "node_type": "KSampler",
                "executed": [],
                "exception_message": "OOM",
                "exception_type": "torch.OutOfMemoryError",
                "traceback": ["  File x\n", "    raise\n"],
                "current_inputs": {},
                "current_outputs": {},
                "timestamp": 1,
            },
        )
    )
    assert isinstance(e, ev.ExecutionError)
    assert (e.node_id, e.node_type, e.exception_type, e.exception_message) == (
        "4",
        "KSampler",
        "torch.OutOfMemoryError",
        "OOM",
    )
    assert e.traceback == ("  File x\n", "    raise\n")
    e = ev.parse_message(
        msg(
            "execution_interrupted",
            {"prompt_id": PID, "node_id": "4", "node_type": "KSampler", "executed": ["1"], "timestamp": 2},
        )
    )
    assert isinstance(e, ev.ExecutionInterrupted) and e.node_id == "4"


def test_status_unknown_binary_and_garbage() -> None:
    e = ev.parse_message(msg("status", {"status": {"exec_info": {"queue_remaining": 2}}, "sid": "abc"}))
    assert isinstance(e, ev.Status) and e.queue_remaining == 2 and e.prompt_id is None
    e = ev.parse_message(msg("crystools.monitor", {"cpu": 3}))
    assert isinstance(e, ev.UnknownEvent) and e.type == "crystools.monitor"
    assert ev.parse_message(b"\x00\x00\x00\x01\x89PNG") is None
    assert ev.parse_message("not json") is None
    assert ev.parse_message(json.dumps([1, 2])) is None
    # the older server's reconnect message: executing without prompt_id
    e = ev.parse_message(msg("executing", {"node": "3"}))
    assert isinstance(e, ev.Executing) and e.prompt_id is None


def history(status: dict, outputs: dict | None = None) -> History:
    return History(PID, outputs or {}, status, {})


def test_history_outcomes() -> None:
    ok = history({"status_str": "success", "completed": True, "messages": [["execution_start", {}]]})
    assert finished(ok) and outcome(ok) is ok
    assert finished(history({}, {"1": {}}))  # servers without status
    assert not finished(history({"status_str": None, "completed": False, "messages": []}))
    err = history(
        {
            "status_str": "error",
            "completed": False,
            "messages": [
                ["execution_start", {"prompt_id": PID}],
                [
                    "execution_error",
                    {
                        "prompt_id": PID,
                        "node_id": "2",
                        "node_type": "CWRaise",
                        "exception_message": "x",
                        "exception_type": "ValueError",
                        "traceback": ["tb"],
                    },
                ],
            ],
        }
    )
    with pytest.raises(ExecutionFailed) as info:
        outcome(err)
    assert info.value.details["node_type"] == "CWRaise" and info.value.details["traceback"] == ["tb"]
    intr = history(
        {
            "status_str": "error",
            "completed": False,
            "messages": [["execution_interrupted", {"prompt_id": PID, "node_id": "1", "node_type": "CWSlow"}]],
        }
    )
    with pytest.raises(ExecutionInterrupted):
        outcome(intr)


def test_node_errors_summary() -> None:
    node_errors = {
        "2": {
            "errors": [
                {
                    "type": "value_not_in_list",
                    "message": "Value not in list",
                    "details": "upscale_method: 'bogus' not in [...]",
                }
            ],
            "dependent_outputs": ["3"],
            "class_type": "ImageScale",
        }
    }
    assert summarise_node_errors(node_errors) == (
        "node 2 (ImageScale): Value not in list: upscale_method: 'bogus' not in [...]"
    )
    assert summarise_node_errors([]) == ""


def test_output_listing_covers_every_key() -> None:
    outputs = {
        "9": {
            "images": [{"filename": "v_00001_.mp4", "subfolder": "video", "type": "output"}],
            "animated": [True],
        },
        "10": {
            "gifs": [
                {
                    "filename": "AnimateDiff_00001.mp4",
                    "subfolder": "",
                    "type": "output",
                    "format": "video/h264-mp4",
                }
            ]
        },
        "11": {"audio": [{"filename": "a.flac", "subfolder": "audio", "type": "output"}]},
        "12": {"latents": [{"filename": "x_00001_.latent", "subfolder": "latents", "type": "output"}]},
        "13": {"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}]},
        "14": {"text": ["hello"], "3d": [{"filename": "m.glb", "subfolder": "3d", "type": "output"}]},
    }
    refs = list_outputs(outputs)
    assert [(r.node_id, r.kind) for r in refs] == [
        ("9", "video"),
        ("10", "video"),
        ("11", "audio"),
        ("12", "latent"),
        ("14", "other"),
    ]
    assert [r.node_id for r in list_outputs(outputs, include_temp=True)].count("13") == 1
    assert kind_of("images", "a.webp") == "image" and kind_of("gifs", "a.gif") == "image"
