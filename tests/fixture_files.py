"""The data files the tests read, all inside the repository (tests/fixtures/; its README says where each came
from). Nothing a test reads lies above the repository root: a user's clone has only what is committed."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OBJECT_INFO_0364 = FIXTURES / "comfyui" / "object_info_0.3.64.json"
PROMPT_RUNNER = FIXTURES / "prompt_runner"
PROMPT_FILES = PROMPT_RUNNER / "prompt_files"
VACE_WORKFLOWS = PROMPT_RUNNER / "wan22_vace_v2v"
