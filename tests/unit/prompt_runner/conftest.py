from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO.parent / "shared" / "fixtures"
PROMPT_FILES = FIXTURES / "prompt_runner" / "prompt_files"
WORKFLOWS = FIXTURES / "prompt_runner" / "wan22_vace_v2v"
OBJECT_INFO = FIXTURES / "comfyui" / "object_info_0.3.64.json"


@pytest.fixture(scope="session")
def object_info() -> dict:
    return json.loads(OBJECT_INFO.read_text())


@pytest.fixture(scope="session")
def fixture_prompt() -> dict:
    return json.loads((WORKFLOWS / "prompt.json").read_text())


@pytest.fixture(scope="session")
def fixture_combine() -> dict:
    return json.loads((WORKFLOWS / "combine.json").read_text())
