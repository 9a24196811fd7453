"""Turn one plan job into the ComfyUI workflow that runs it, using the profile's roles (no node ids here).

* HIGH: the HIGH LoRA/model, sampler steps of the high-noise expert, prompts, frame count, start frame,
  reference frame (or none for chunk 1), the latent saved where the plan says; decode/video nodes removed
  (the pass stops once the latent is saved).
* LOW: the LOW LoRA/model and steps, the same conditioning, the HIGH latent loaded, the segment written by
  the video node and its last frame saved.
* combine (progressive): segment k appended to the video combined so far, its overlap skipped and capped at
  the frames it keeps (``skip_input`` / ``cap_input``); chunk 1 has no previous video, so the join node is
  bypassed and the previous-video loader removed.

Every workflow is checked before it is returned: no dangling links, and (when object_info is given) core
nodes carry their required inputs and valid enum values.
"""

from __future__ import annotations

import copy
import posixpath
from collections.abc import Mapping
from typing import Any

from comfy_worker.errors import InputRejected
from comfy_worker.handlers.prompt_runner import graph
from comfy_worker.handlers.prompt_runner.planner import COMBINE, HIGH, LOW, PlanJob
from comfy_worker.handlers.prompt_runner.profile import Profile, Role

DEFAULT_OUTPUT_DIR = "/workspace/ComfyUI/output"


def _strip_ext(path: str) -> str:
    return posixpath.splitext(path)[0]


class _Editor:
    def __init__(self, profile: Profile, workflow: graph.Workflow, object_info: Mapping[str, Any] | None) -> None:
        self.profile = profile
        self.wf = workflow
        self.object_info = object_info
        self.mods: list[dict[str, Any]] = []

    def set(self, role_name: str, role: Role | None, key: str, value: Any, *, only_if_present: bool = False) -> None:
        if role is None or value is None:
            return
        name = role.input(key)
        if name is None:
            return
        if only_if_present and name not in (self.wf.get(role.node, {}).get("inputs") or {}):
            return
        self.mods.append(graph.set_input(self.wf, role.node, name, value, role=role_name))

    def role(self, name: str) -> Role | None:
        return self.profile.roles.get(name)

    def remove(self, node_ids: tuple[str, ...] | list[str], reason: str) -> None:
        present = [n for n in node_ids if n in self.wf]
        if present:
            self.mods += graph.delete_nodes(
                self.wf,
                present,
                object_info=self.object_info,
                optional_inputs=self.profile.optional_inputs,
                role=reason,
            )


def build_job_workflow(
    profile: Profile,
    plan_job: PlanJob,
    base_workflow: graph.Workflow | None = None,
    *,
    input_video: str | None = None,
    seed: int | None = None,
    comfy_output_dir: str | None = None,
    object_info: Mapping[str, Any] | None = None,
) -> tuple[graph.Workflow, list[dict[str, Any]]]:
    """The workflow for ``plan_job`` and the modifications applied to the base (or combine) workflow.

    ``comfy_output_dir`` is where ComfyUI finds files read by absolute path (default: the profile's
    ``paths.comfy_output_dir``); the executor passes its real directory."""
    root = (comfy_output_dir or profile.paths.get("comfy_output_dir") or DEFAULT_OUTPUT_DIR).rstrip("/")
    if plan_job.job_type in (HIGH, LOW):
        wf = copy.deepcopy(base_workflow) if base_workflow is not None else profile.workflow_copy("base")
        mods = _render(profile, plan_job, wf, root, input_video, seed, object_info)
    elif plan_job.job_type == COMBINE:
        if profile.combine_workflow is None and base_workflow is None:
            raise InputRejected(
                f"job {plan_job.job_id}: profile {profile.name!r} has no combine workflow (ffmpeg concat)"
            )
        wf = copy.deepcopy(base_workflow) if base_workflow is not None else profile.workflow_copy("combine")
        mods = _combine(profile, plan_job, wf, root, object_info)
    else:
        raise InputRejected(f"job {plan_job.job_id}: unknown job_type {plan_job.job_type!r}")
    graph.check_workflow(wf, object_info, label=f"{plan_job.job_id} ({plan_job.job_type})")
    return wf, mods


def _render(
    profile: Profile,
    job: PlanJob,
    wf: graph.Workflow,
    root: str,
    input_video: str | None,
    seed: int | None,
    object_info: Mapping[str, Any] | None,
) -> list[dict[str, Any]]:
    ed = _Editor(profile, wf, object_info)
    pass_cfg = profile.passes.get("high" if job.job_type == HIGH else "low")
    if pass_cfg is not None:
        ed.set("lora", ed.role("lora"), "input", pass_cfg.lora)
        ed.set("model", ed.role("model"), "input", pass_cfg.model)
        if pass_cfg.steps is not None:
            ed.set("sampler", ed.role("sampler"), "start_step", pass_cfg.steps[0], only_if_present=True)
            ed.set("sampler", ed.role("sampler"), "end_step", pass_cfg.steps[1], only_if_present=True)
    ed.set("positive_prompt", ed.role("positive_prompt"), "input", job.prompts.get("positive"))
    ed.set("negative_prompt", ed.role("negative_prompt"), "input", job.prompts.get("negative"))
    ed.set("frames", ed.role("frames"), "input", job.frames_to_render)
    ed.set("start_frame", ed.role("start_frame"), "input", job.start_frame)
    ed.set("input_video", ed.role("input_video"), "input", input_video)
    ed.set("seed", ed.role("seed"), "input", seed)
    if job.reference_image_path:
        ed.set("reference", ed.role("reference"), "input", f"{root}/{job.reference_image_path}")
    else:
        ed.remove(profile.first_chunk_remove, "first_chunk")
    if job.job_type == HIGH and job.latent_output_path:
        save = ed.role("latent_save")
        chunk_dir = posixpath.dirname(job.latent_output_path)
        if save is not None and save.input("prefix"):  # core SaveLatent: {prefix}_00001_.latent, collected by path
            ed.set("latent_save", save, "prefix", f"{root}/{_strip_ext(job.latent_output_path)}")
        elif save is not None and save.input("subfolder"):
            ed.set("latent_save", save, "folder", f"{root}/{posixpath.dirname(chunk_dir)}")
            ed.set("latent_save", save, "subfolder", posixpath.basename(chunk_dir))
        else:
            ed.set("latent_save", save, "folder", f"{root}/{chunk_dir}")
        ed.set("latent_save", save, "filename", _strip_ext(posixpath.basename(job.latent_output_path)))
    if job.job_type == LOW:
        load = ed.role("latent_load")
        if job.latent_input_path and load is not None:
            as_file = load.input("path") == "file"  # core LoadLatent takes the file; folder loaders its folder
            path = job.latent_input_path if as_file else posixpath.dirname(job.latent_input_path)
            ed.set("latent_load", load, "input", f"{root}/{path}")
        if job.video_output_path:
            prefix = _strip_ext(job.video_output_path)
            ed.set("video_out", ed.role("video_out"), "input", prefix)
            ed.set("last_frame", ed.role("last_frame"), "input", f"{prefix}_last")
    if pass_cfg is not None:
        ed.remove(pass_cfg.remove, "high_pass" if job.job_type == HIGH else "low_pass")
    return ed.mods


def _combine(
    profile: Profile, job: PlanJob, wf: graph.Workflow, root: str, object_info: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    ed = _Editor(profile, wf, object_info)
    roles = profile.combine_roles
    if not job.segment_paths:
        raise InputRejected(f"job {job.job_id}: a combine job needs segment_paths")
    new = roles["new_segment"]
    ed.set("new_segment", new, "input", f"{root}/{job.segment_paths[-1]}")
    ed.set("new_segment", new, "skip_input", job.trim_start_frames)
    ed.set("new_segment", new, "cap_input", job.frames_kept)  # drops what the chunk rendered past its share
    previous, join = roles.get("previous"), roles.get("join")
    if job.previous_combined_path:
        ed.set("previous", previous, "input", f"{root}/{job.previous_combined_path}")
    else:
        # First combine: nothing to append to. Route the join node's consumers to the new segment's chain.
        if join is not None and join.node in wf and join.input("new_input"):
            ed.mods += graph.bypass_node(
                wf,
                join.node,
                join.input("new_input") or "",
                object_info=object_info,
                optional_inputs=profile.optional_inputs,
            )
        if previous is not None:
            ed.remove([previous.node], "first_combine")
    if job.video_output_path:
        ed.set("writer", roles["writer"], "input", _strip_ext(job.video_output_path))
    return ed.mods
