"""The ``prompt_runner`` task: one long video rendered as a HIGH/LOW chunk chain (see :mod:`.executor`).

Params::

    {"video_name": "sunset_beach", "total_frames": 500, "positive_prompt": "…", "negative_prompt": "…",
     "frames_per_chunk": 101, "input_video": "source.mp4", "profile": "wan22_vace_v2v",
     "seed": 42, "max_retries": 3, "keep_intermediate": false,
     "overrides": {"overlap": 0, "reference_offset": 10, "nodes": {"54": {"steps": 8}}}}

``frames_per_chunk`` and ``max_retries`` are optional: without them the profile's ``defaults`` apply, else 101
and 3.

* prepare: parse (errors name the field; permanent), load the profile, plan, restore the checkpoint.
  ``profile`` names a shipped profile or one in PROFILES_DIR, never a path; ``input_video`` and overrides
  of file-naming inputs may not name the worker's files (see :mod:`comfy_worker.engine.paths`).
* execute: every HIGH/LOW step not yet done; the task's checkpoint is saved after each one.
* finish: join the segments, upload ``{video}/final/{video}.mp4``, remove intermediates unless
  ``keep_intermediate``; ``output_url`` is the final video.

Storage layout: ``prompt_runner/{task_id}/{video_name}/latents|videos|references|combined|final|state/…``.
ComfyUI's output directory must be visible to the worker (COMFY_OUTPUT_DIR): the chain's nodes read and
write latents and reference frames there by absolute path.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from comfy_worker.engine.base import COMFYUI
from comfy_worker.engine.housekeeping import comfy_folders
from comfy_worker.engine.paths import kind_of_input, path_problems
from comfy_worker.engine.scoped import task_subfolder
from comfy_worker.errors import ConfigError
from comfy_worker.handlers.base import HandlerResult, TaskContext
from comfy_worker.handlers.outputs import stop_when_dropped
from comfy_worker.handlers.prompt_runner.dryrun import plan_for
from comfy_worker.handlers.prompt_runner.executor import ChainEnv, ChainOptions, ChainRunner
from comfy_worker.handlers.prompt_runner.profile import Profile, load_profile, load_task_profile
from comfy_worker.handlers.prompt_runner.prompt_file import PromptFileError, PromptSpec, from_params
from comfy_worker.handlers.prompt_runner.state import ChainState, summary
from comfy_worker.logs import get_logger
from comfy_worker.pathsafe import path_key, relative_problem

log = get_logger(__name__)
DEFAULT_PROFILE = "wan22_vace_v2v"
RUN_PARAMS = ("max_retries", "keep_intermediate")  # handler-level params, not part of the PromptSpec
OVERRIDE_KEYS = ("overlap", "reference_offset", "nodes")


def split_params(params: dict[str, Any]) -> tuple[PromptSpec, dict[str, Any]]:
    """(spec, run options) from task params; every error names the field."""
    spec_params = {k: v for k, v in params.items() if k not in RUN_PARAMS}
    spec = from_params(spec_params)
    max_retries = params.get("max_retries")  # None: the profile's defaults.max_retries, else 3
    if max_retries is not None and (
        isinstance(max_retries, bool) or not isinstance(max_retries, int) or not 0 <= max_retries <= 100
    ):
        raise PromptFileError("params", f"must be an integer from 0 to 100, got {max_retries!r}", field="max_retries")
    keep = params.get("keep_intermediate", False)
    if not isinstance(keep, bool):
        raise PromptFileError("params", f"must be true or false, got {keep!r}", field="keep_intermediate")
    return spec, {"max_retries": max_retries, "keep_intermediate": keep}


def check_overrides(spec: PromptSpec, profile: Profile) -> dict[str, Any]:
    """Validated ``overrides``: plan values (overlap, reference_offset) and per-node input values."""
    ov = dict(spec.overrides)
    unknown = sorted(set(ov) - set(OVERRIDE_KEYS))
    if unknown:
        raise PromptFileError("params", f"unknown key {unknown[0]!r}; known: {', '.join(OVERRIDE_KEYS)}",
                              field="overrides")  # fmt: skip
    for key in ("overlap", "reference_offset"):
        value = ov.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise PromptFileError("params", f"must be an integer >= 0, got {value!r}", field=f"overrides.{key}")
    nodes = ov.get("nodes") or {}
    if not isinstance(nodes, dict):
        raise PromptFileError("params", "must map node ids to {input: value}", field="overrides.nodes")
    for node_id, inputs in nodes.items():
        if str(node_id) not in profile.base_workflow:
            raise PromptFileError(
                "params", f"node {node_id} is not in profile {profile.name}'s workflow", field="overrides.nodes"
            )
        if not isinstance(inputs, dict):
            raise PromptFileError("params", "must be an object of {input: value}", field=f"overrides.nodes.{node_id}")
    ov["nodes"] = {str(k): dict(v) for k, v in nodes.items()}
    return ov


def check_task_paths(spec: PromptSpec, profile: Profile, overrides: dict[str, Any]) -> None:
    """Refuse task values that would name the worker's files, before anything is queued: ``input_video`` (a
    file in ComfyUI's input folder) and every override of a file-naming input. Values a chain step sets itself
    (its own latents and frames) are checked again per step, against the chain's folder, by the executor."""
    if spec.input_video is not None and (problem := relative_problem(spec.input_video)):
        raise PromptFileError(
            "params",
            f"{problem}: input_video names a file in ComfyUI's input folder (e.g. 'source.mp4')",
            field="input_video",
        )
    touched = {
        node_id: {"class_type": profile.base_workflow[node_id].get("class_type"), "inputs": inputs}
        for node_id, inputs in overrides["nodes"].items()
    }
    for p in path_problems(touched, fetched_urls=False):
        if kind_of_input(p["class_type"], p["input"]) == "path":
            problem = f"{p['value']!r} names a file by path; the chain points these inputs at its own files"
        else:
            problem = p["message"].split(": ", 1)[1]
        raise PromptFileError("params", problem, field=f"overrides.nodes.{p['node_id']}.{p['input']}")


def prepare_chain(
    spec: PromptSpec,
    checkpoint: dict[str, Any] | None,
    *,
    task: bool = False,
    profiles_dir: Path | None = None,
) -> tuple[Profile, ChainState, dict[str, Any]]:
    """Profile, restored (or fresh) state and validated overrides for ``spec`` (pure apart from reading the
    profile). ``task``: the spec comes from task params, so its profile must be a name (shipped or in
    ``profiles_dir``) and its file-naming values are checked; local runs (the operator's own) may name a path."""
    if task:
        profile = load_task_profile(spec.profile or DEFAULT_PROFILE, profiles_dir)
    else:
        profile = load_profile(spec.profile or DEFAULT_PROFILE)
    overrides = check_overrides(spec, profile)
    if task:
        check_task_paths(spec, profile, overrides)
    plan = plan_for(  # frames_per_chunk: params > the profile's defaults > built-in
        spec,
        profile,
        overlap=overrides.get("overlap"),
        reference_offset=overrides.get("reference_offset"),
        override_source="task overrides",
    )
    return profile, ChainState.restore(checkpoint, plan), overrides


class PromptRunnerHandler:
    task_type = "prompt_runner"
    engine = COMFYUI  # no submit stage: execute queues each step's prompt, under the GPU grant

    async def prepare(self, ctx: TaskContext) -> ChainRunner:
        spec, run = split_params(ctx.task.params)
        root = ctx.settings.comfy_output_path
        if root is None:
            raise ConfigError(
                "COMFY_OUTPUT_DIR",
                "prompt_runner tasks need ComfyUI's output directory as this worker sees it (latents and "
                "reference frames are read there by path); set COMFY_OUTPUT_DIR, or launch ComfyUI with COMFY_PATH",
            )
        profile, state, overrides = prepare_chain(
            spec, ctx.task.checkpoint, task=True, profiles_dir=ctx.settings.profiles_path
        )
        task = ctx.task
        env = ChainEnv(
            client=ctx.client,
            storage=ctx.storage,
            storage_prefix=f"{task.task_type}/{path_key(task.task_id)}",
            comfy_root=root,
            files_root=root / task_subfolder(task.task_id) / "chain",  # removed with the task's other files
            input_dir=comfy_folders(ctx.settings).input,  # as cleanup sees it (COMFY_ARGS too)
            uploads=ctx.uploads,
            guard=functools.partial(stop_when_dropped, ctx),
            work_dir=ctx.work_dir,
            save_state=ctx.checkpoint,
            progress=ctx.progress,
            cancel=ctx.cancel,
            started=ctx.started,
            step_timeout_s=ctx.settings.task_timeout_s,
            stall_timeout_s=ctx.settings.stall_timeout_s,
            run_key=f"{task.task_id}:{task.attempts}",
        )
        options = ChainOptions.from_profile(
            profile,
            max_retries=run["max_retries"],
            keep_intermediate=run["keep_intermediate"],
            node_overrides=overrides["nodes"],
        )
        object_info = await ctx.client.object_info()
        log.info(
            "chain_planned",
            video_name=state.plan.video_name,
            chunks=state.plan.chunks,
            profile=profile.name,
            completed=len(state.completed),
        )
        return ChainRunner(env, spec, profile, state, options, object_info)

    async def execute(self, ctx: TaskContext, runner: ChainRunner) -> ChainRunner:
        await runner.render()
        return runner

    async def finish(self, ctx: TaskContext, runner: ChainRunner) -> HandlerResult:
        final = await runner.join()
        plan = runner.plan
        state_file = ctx.work_dir / "state" / f"{plan.video_name}.json"
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps(runner.state.to_dict(), indent=2) + "\n", encoding="utf-8")
        stored_state = await runner.upload(state_file, f"{plan.video_name}/state/{plan.video_name}.json", journal=False)
        removed = await runner.cleanup()
        kept = {} if not runner.options.keep_intermediate else dict(runner.state.artifacts)
        return HandlerResult(
            result={
                "video_name": plan.video_name,
                "outputs": [
                    {
                        "kind": "video",
                        "role": "final",
                        "storage_path": final["storage_path"],
                        "url": final["url"],
                        "frames": final["frames"],
                        "bytes": final.get("bytes"),
                    },
                    {"kind": "state", "storage_path": stored_state.path, "url": stored_state.url},
                ],
                "frames": final["frames"],
                "join_mode": final["mode"],
                "plan": summary(plan),
                "prompts": runner.state.prompts,
                "intermediates": kept,
                "intermediates_removed": len(removed),
            },
            output_url=final["url"],
        )
