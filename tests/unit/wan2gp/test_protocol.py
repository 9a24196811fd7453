"""worker_wgp.protocol: every message survives encode → parse, and bad lines are refused naming the key."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker_wgp import protocol as p

MEMORY = p.Memory(rss_bytes=123, gpu_allocated_bytes=4, gpu_reserved_bytes=5, gpu_peak_bytes=6,
                  gpu_free_bytes=7, gpu_total_bytes=8)
REQUESTS = [
    p.Generate("g1", "i2v_14B", {"prompt": "a fox", "resolution": "832x480", "activated_loras": ["/l/a.safetensors"]}),
    p.Cancel("c1", "g1"),
    p.Free("f1"),
    p.Status("s1"),
    p.LoraDir("l1", "i2v_14B"),
    p.Shutdown("x1"),
]
EVENTS = [
    p.Ready(42, 1, "10.1", None, MEMORY),
    p.Progress("g1", "inference", 3, 30, 41.0, "Denoising"),
    p.Progress("g1", "loading_model"),
    p.Result("g1", "i2v_14B", ["/out/a.mp4"], True, 12.5, 80.25, MEMORY),
    p.Error("g1", "oom", "unsufficient VRAM", {"exception": "OutOfMemoryError"}),
    p.Error(None, "bad_request", "not JSON"),
    p.Freed("f1", "i2v_14B", MEMORY),
    p.Freed("f2", None),
    p.StatusReply("s1", None, False, MEMORY),
    p.LoraDirReply("l1", "i2v_14B", "/wan/loras/wan"),
    p.Bye("x1"),
]


@pytest.mark.parametrize("message", REQUESTS, ids=lambda m: m.op)
def test_requests_round_trip(message: p.Request) -> None:
    line = p.encode(message)
    assert line.endswith("\n") and line.count("\n") == 1
    assert p.parse_request(line) == message
    assert json.loads(line)["v"] == p.PROTOCOL_VERSION


@pytest.mark.parametrize("message", EVENTS, ids=lambda m: m.type)
def test_events_round_trip(message: p.Event) -> None:
    assert p.parse_event(p.encode(message)) == message


@given(st.text(), st.dictionaries(st.text(), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(), lambda c: st.lists(c) | st.dictionaries(st.text(), c))))
def test_any_prompt_and_settings_survive_one_line(prompt: str, extra: dict[str, object]) -> None:
    message = p.Generate("g", "t2v", {**extra, "prompt": prompt})
    line = p.encode(message)
    assert line.count("\n") == 1  # newlines inside strings are escaped: one message, one line
    assert p.parse_request(line) == message


@pytest.mark.parametrize(
    ("line", "key", "text"),
    [
        ('{"v":1,"op":"generate","id":"g","model":"t2v"}', "settings", "generate.settings is missing"),
        ('{"v":1,"op":"generate","id":"g","model":"t2v","settings":{},"prio":1}', "prio", "unexpected key 'prio'"),
        ('{"v":1,"op":"generate","id":7,"model":"t2v","settings":{}}', "id", "generate.id must be a string"),
        ('{"v":1,"op":"generate","id":"g","model":"t2v","settings":[]}', "settings", "must be an object"),
        ('{"v":2,"op":"free","id":"f"}', "v", "protocol version must be 1"),
        ('{"op":"free","id":"f"}', "v", "protocol version must be 1"),
        ('{"v":1,"op":"explode","id":"f"}', "op", "op must be one of"),
        ('{"v":1,"type":"ready"}', "op", "op must be one of"),
        ("[1,2]", None, "must be a JSON object"),
        ("free please", None, "not JSON"),
    ],
)
def test_bad_requests_are_refused_naming_the_key(line: str, key: str | None, text: str) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.parse_request(line)
    assert info.value.key == key and text in str(info.value)


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('{"v":1,"type":"error","id":"g","kind":"meltdown","message":"x"}', "kind"),
        ('{"v":1,"type":"progress","id":"g","phase":"inference","step":true}', "step"),
        ('{"v":1,"type":"result","id":"g","model":"m","files":["a",3],"switched":true,"load_s":1,"run_s":2}',
         "files[1]"),
        ('{"v":1,"type":"freed","id":"f","model":null,"memory":{"rss_bytes":1,"vram":2}}', "vram"),
        ('{"v":1,"type":"status","id":"s","model":null,"busy":"no"}', "busy"),
    ],
)
def test_bad_events_are_refused_naming_the_key(line: str, key: str) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.parse_event(line)
    assert info.value.key == key


def test_overlong_lines_are_refused() -> None:
    with pytest.raises(p.ProtocolError, match="over the"):
        p.parse_request(" " * (p.MAX_LINE_BYTES + 1))


def test_request_id_of_a_bad_line() -> None:
    assert p.request_id_of('{"v":1,"op":"nope","id":"r7"}') == "r7"
    assert p.request_id_of("garbage") is None
    assert p.request_id_of('{"id": 3}') is None
