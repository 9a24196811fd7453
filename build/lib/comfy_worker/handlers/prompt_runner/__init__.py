"""The ``prompt_runner`` task: long videos rendered as Wan 2.2 HIGH/LOW chunk chains.

Pure pieces (no I/O beyond reading files): :mod:`.prompt_file` (prompt files and task params),
:mod:`.planner` (the chain plan), :mod:`.profile` (chain profiles), :mod:`.graph` (graph edits),
:mod:`.build` (plan job → workflow), :mod:`.dryrun` (writes the plan and workflows), :mod:`.join`
(ffmpeg concat of segments), :mod:`.cli` (the ``prompt-runner`` subcommand).
"""

from __future__ import annotations

from comfy_worker.handlers.prompt_runner.build import build_job_workflow
from comfy_worker.handlers.prompt_runner.planner import COMBINE, HIGH, LOW, Plan, PlanJob, plan
from comfy_worker.handlers.prompt_runner.profile import Profile, ProfileError, load_profile
from comfy_worker.handlers.prompt_runner.prompt_file import (
    PromptFileError,
    PromptSpec,
    from_params,
    parse_file,
    parse_text,
)

__all__ = [
    "COMBINE",
    "HIGH",
    "LOW",
    "Plan",
    "PlanJob",
    "Profile",
    "ProfileError",
    "PromptFileError",
    "PromptSpec",
    "build_job_workflow",
    "from_params",
    "load_profile",
    "parse_file",
    "parse_text",
    "plan",
]
