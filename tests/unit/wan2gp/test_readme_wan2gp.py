"""The README's Wan2GP section says what the code does: every task type with its Wan2GP model, every WAN2GP_* and
ENGINE_* setting, and an example whose params the i2v contract accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path

from comfy_worker.config import ENV_VARS
from worker_wgp.tasks import TASK_TYPES, parse_params

README = Path(__file__).resolve().parents[3] / "README.md"


def section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Wan2GP tasks and the unified worker")
    return text[start : text.index("\n## ", start + 10)]


def test_every_task_type_is_listed_with_its_model() -> None:
    text = section()
    for task_type, kind in TASK_TYPES.items():
        assert f"`{task_type}`" in text, task_type
        assert kind.model in text, (task_type, kind.model)


def test_every_wan2gp_and_engine_setting_is_named() -> None:
    text = section()
    for var in ENV_VARS:
        if var.startswith(("WAN2GP_", "ENGINE_")):
            assert f"`{var}`" in text or var in text, var


def test_the_example_params_are_a_valid_i2v_task() -> None:
    example = re.search(r"An `(\w+)` task's params.*?```json\n(.*?)```", section(), re.S)
    assert example
    job = parse_params(example.group(1), json.loads(example.group(2)))
    assert job.model == "i2v" and job.settings["video_length"] == 81 and job.media[0].key == "image_start"
