"""The README's comfyui_* examples are valid params: one per task type, each accepted by its contract and built
into a graph; the Python example runs as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

from comfy_worker.builders import TASK_TYPES, build_resolved, resolve

README = Path(__file__).resolve().parents[3] / "README.md"


def examples() -> list[dict]:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- comfyui-examples.*?```json\n(.*?)```", text, re.S)
    assert block, "README lost its comfyui-examples block"
    body, found, decoder = block.group(1), [], json.JSONDecoder()
    i = 0
    while body[i:].strip():
        i += len(body[i:]) - len(body[i:].lstrip())
        obj, i = decoder.raw_decode(body, i)
        found.append(obj)
    return found


def test_one_valid_example_per_task_type() -> None:
    found = examples()
    assert sorted(e["task_type"] for e in found) == sorted(TASK_TYPES)
    for example in found:
        resolved = resolve(example["task_type"], example["params"])
        names = {k: f"{k}.bin" for k in resolved.media}
        assert build_resolved(resolved, names)


def test_python_example_runs() -> None:
    text = README.read_text(encoding="utf-8")
    code = re.search(r"```python\n(from comfy_worker.builders import .*?)```", text, re.S)
    assert code
    scope: dict = {}
    exec(code.group(1), scope)  # the README's own example
    assert any(n["class_type"] == "WanSoundImageToVideoExtend" for n in scope["graph"].values())
