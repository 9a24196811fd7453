from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixture_files import OBJECT_INFO_0364 as OBJECT_INFO
from tests.fixture_files import PROMPT_FILES
from tests.fixture_files import VACE_WORKFLOWS as WORKFLOWS

REPO = Path(__file__).resolve().parents[3]
__all__ = ["OBJECT_INFO", "PROMPT_FILES", "REPO", "WORKFLOWS"]


@pytest.fixture(scope="session")
def object_info() -> dict:
    return json.loads(OBJECT_INFO.read_text())


@pytest.fixture(scope="session")
def fixture_prompt() -> dict:
    return json.loads((WORKFLOWS / "prompt.json").read_text())


@pytest.fixture(scope="session")
def fixture_combine() -> dict:
    return json.loads((WORKFLOWS / "combine.json").read_text())
