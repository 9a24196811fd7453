"""Dry run: plan every video and write every workflow to disk — no network, no ComfyUI, no ffmpeg.

Layout (one run directory, ``temp_dry_run_YYYYMMDD_HHMMSS/`` or ``DRY_RUN_TEMP_DIR``)::

    workflows/workflow_001_high_noise_render.json   one per job, numbered by job number
    workflows/workflow_002_low_noise_render.json
    …
    workflows/workflow_011_combine.json             progressive combine (profiles with a combine workflow)
    render_jobs/render_jobs_HHMMSS.json             the HIGH/LOW jobs of the plan
    combine_jobs/combine_jobs_HHMMSS.json           the combine jobs
    state/{video_name}.json                         the plan + an empty progress record

With several prompt files, each video gets the same layout under ``{run_dir}/{video_name}/``.

The summary lists, per job, the video frames its chunk covers, the frames it renders (4k+1) and the frames
it keeps (what it adds to the final video), and says where ``frames_per_chunk`` came from.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from comfy_worker.handlers.prompt_runner.build import build_job_workflow
from comfy_worker.handlers.prompt_runner.planner import COMBINE, LOW, Plan, PlanJob, plan
from comfy_worker.handlers.prompt_runner.profile import Profile, ProfileError
from comfy_worker.handlers.prompt_runner.prompt_file import DEFAULT_FRAMES_PER_CHUNK, PromptSpec
from comfy_worker.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class DryRunResult:
    run_dir: Path
    plans: list[Plan]
    workflow_files: list[Path]
    render_jobs_files: list[Path]
    combine_jobs_files: list[Path]
    state_files: list[Path]
    settings: list[dict[str, str]] = field(default_factory=list)  # per plan: setting → where it came from


def plan_settings(spec: PromptSpec, profile: Profile, **overrides: Any) -> dict[str, tuple[int, str]]:
    """``frames_per_chunk``, ``overlap`` and ``reference_offset`` with where each came from, highest first:
    ``overrides`` (the command line's flags, a task's ``overrides``) > the prompt file's / task params'
    ``frames_per_chunk`` > the profile's ``defaults`` > the built-in value."""
    d = profile.defaults
    by_spec = "task params" if spec.source in ("params", "<params>") else "prompt file"
    values: dict[str, tuple[int, str]] = {
        "frames_per_chunk": (DEFAULT_FRAMES_PER_CHUNK, "built-in"),
        "overlap": (0, "built-in"),
        "reference_offset": (10, "built-in"),
    }
    for key in values:
        if d.get(key) is not None:
            values[key] = (int(d[key]), f"profile {profile.name} defaults")
    if spec.frames_per_chunk is not None:
        values["frames_per_chunk"] = (spec.frames_per_chunk, by_spec)
    source = str(overrides.pop("override_source", "override"))
    for key, value in overrides.items():
        if value is not None:
            values[key] = (int(value), source)
    return values


def plan_for(spec: PromptSpec, profile: Profile, **overrides: Any) -> Plan:
    """The plan for ``spec``: settings by :func:`plan_settings` (flag > prompt file / task params > profile
    defaults > built-in). A combine workflow must be able to drop the frames a chunk renders past its share:
    when the plan needs that and the profile's new-segment loader has no ``cap_input``, this fails now, before
    anything renders."""
    values = {k: v for k, (v, _src) in plan_settings(spec, profile, **overrides).items()}
    p = plan(spec, join_mode=profile.join_mode, **values)  # type: ignore[arg-type]
    if p.join_mode == "progressive":
        new = profile.combine_roles.get("new_segment")
        surplus = [j for j in p.combine_jobs if j.frames_kept is not None and _renders_more(p, j)]
        if surplus and (new is None or new.input("cap_input") is None):
            first = surplus[0]
            raise ProfileError(
                profile.source,
                f"combine_roles.new_segment.cap_input: needed to keep {first.frames_kept} of the frames chunk "
                f"{first.chunk_index + 1} renders (Wan renders 4k+1 frames; {p.total_frames} frames in chunks of "
                f"{p.frames_per_chunk} leave a surplus); name the loader's frame cap input (VHS_LoadVideoPath: "
                "frame_load_cap), or pick a total / frames_per_chunk of the form 4k+1",
                role="new_segment",
            )
    return p


def _renders_more(p: Plan, combine: PlanJob) -> bool:
    low = next(j for j in p.render_jobs if j.video_output_path == combine.segment_paths[-1])
    return low.trim_end_frames > 0


def _job_entry(job: PlanJob, video_name: str) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "job_number": job.job_number,
        "job_type": job.job_type,
        "chunk_index": job.chunk_index,
        "video_name": video_name,
        "frames_to_render": job.frames_to_render,
        "frames_kept": job.frames_kept,
        "trim_start_frames": job.trim_start_frames,
        "trim_end_frames": job.trim_end_frames,
        "start_frame": job.start_frame,
        "prompts": job.prompts,
        "latent_input_path": job.latent_input_path,
        "latent_output_path": job.latent_output_path,
        "reference_image_path": job.reference_image_path,
        "reference_frame_index": job.reference_frame_index,
        "video_output_path": job.video_output_path,
        "segment_paths": job.segment_paths,
        "previous_combined_path": job.previous_combined_path,
        "depends_on": job.depends_on,
    }


def _write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def default_run_dir(now: datetime, temp_dir: str | None = None) -> Path:
    if temp_dir:
        return Path(temp_dir)
    return Path(f"temp_dry_run_{now:%Y%m%d_%H%M%S}")


def dry_run(
    specs: list[PromptSpec],
    profile: Profile,
    *,
    run_dir: Path | None = None,
    temp_dir: str | None = None,
    object_info: Mapping[str, Any] | None = None,
    now: Callable[[], datetime] = datetime.now,
    plan_overrides: Mapping[str, Any] | None = None,
) -> DryRunResult:
    """Plan each spec, build every job's workflow (validated), write the layout above."""
    started = now()
    root = run_dir or default_run_dir(started, temp_dir)
    stamp = f"{started:%H%M%S}"
    result = DryRunResult(root, [], [], [], [], [])
    for spec in specs:
        out = root / spec.video_name if len(specs) > 1 else root
        settings = plan_settings(spec, profile, **dict(plan_overrides or {}))
        p = plan_for(spec, profile, **dict(plan_overrides or {}))
        result.plans.append(p)
        result.settings.append({k: src for k, (_v, src) in settings.items()})
        for job in p.jobs:
            if job.job_type == COMBINE and profile.combine_workflow is None:
                continue  # ffmpeg concat: no workflow to write
            workflow, mods = build_job_workflow(
                profile, job, input_video=spec.input_video, seed=spec.seed, object_info=object_info
            )
            base = profile.combine_workflow if job.job_type == COMBINE else profile.base_workflow
            doc = {
                "workflow_id": job.job_number,
                "timestamp": now().isoformat(),
                "job_info": {
                    "type": job.job_type,
                    "job_id": job.job_id,
                    "job_number": job.job_number,
                    "video_name": spec.video_name,
                    "chunk_index": job.chunk_index,
                    "frames_to_render": job.frames_to_render,
                    "frames_kept": job.frames_kept,
                    "start_frame": job.start_frame,
                    "modifications": mods,
                },
                "workflow": workflow,
                "original_nodes_count": len(base or {}),
                "modifications_applied": len(mods),
            }
            name = f"workflow_{job.job_number:03d}_{job.job_type}.json"
            result.workflow_files.append(_write_json(out / "workflows" / name, doc))
        metadata = {
            "video_name": spec.video_name,
            "source": spec.source,
            "total_frames": p.total_frames,
            "frames_per_chunk": p.frames_per_chunk,
            "overlap": p.overlap,
            "reference_offset": p.reference_offset,
            "settings_from": result.settings[-1],
            "chunks": p.chunks,
            "join_mode": p.join_mode,
            "profile": profile.name,
            "final_output_path": p.final_output_path,
        }
        for kind, jobs, files in (
            ("render", p.render_jobs, result.render_jobs_files),
            ("combine", p.combine_jobs, result.combine_jobs_files),
        ):
            doc = {
                "job_type": kind,
                "timestamp": started.isoformat(),
                "metadata": metadata,
                "total_jobs": len(jobs),
                "jobs": [_job_entry(j, spec.video_name) for j in jobs],
            }
            files.append(_write_json(out / f"{kind}_jobs" / f"{kind}_jobs_{stamp}.json", doc))
        state = {
            "video_name": spec.video_name,
            "dry_run": True,
            "created_at": started.isoformat(),
            "spec": spec.to_dict(),
            "profile": profile.name,
            "plan": p.to_dict(),
            "completed_jobs": [],
            "artifacts": {},
        }
        result.state_files.append(_write_json(out / "state" / f"{spec.video_name}.json", state))
        log.info("dry_run_planned", video_name=spec.video_name, chunks=p.chunks, jobs=len(p.jobs), run_dir=str(out))
    return result


def summary(result: DryRunResult) -> str:
    lines = [f"Dry run written to {result.run_dir}"]
    for i, p in enumerate(result.plans):
        renders = p.render_jobs
        fpc_from = result.settings[i].get("frames_per_chunk", "?") if i < len(result.settings) else "?"
        lines.append(
            f"  {p.video_name}: {p.total_frames} frames, {p.chunks} chunks of <= {p.frames_per_chunk} "
            f"(frames_per_chunk from {fpc_from}; overlap {p.overlap}, reference at -{p.reference_offset}), "
            f"{len(renders)} render jobs, {len(p.combine_jobs)} combine job(s) [{p.join_mode}] → {p.final_output_path}"
        )
        for j in p.jobs:
            deps = ",".join(d.rsplit("-", 2)[-2] for d in j.depends_on) or "-"
            lines.append(
                f"    {j.job_number:3d} {j.job_type:<18} chunk {j.chunk_index + 1:<3} {_span(j):<44} after {deps}"
            )
        kept = sum(j.frames_kept or 0 for j in p.jobs if j.job_type == LOW)
        lines.append(
            f"    kept {kept} of {sum(j.frames_to_render for j in p.jobs if j.job_type == LOW)} frames rendered"
        )
    lines.append(f"  {len(result.workflow_files)} workflow file(s) in workflows/")
    return "\n".join(lines)


def _span(j: PlanJob) -> str:
    """``frames 404-499 render 97 keep 96 (-1 end)``: the video frames a chunk covers, what it renders, keeps."""
    if not j.frames_to_render:
        return f"{len(j.segment_paths)} segment(s)"
    if j.frames_kept is None:
        return f"frames {j.start_frame}-{j.start_frame + j.frames_to_render - 1} render {j.frames_to_render}"
    first = j.start_frame + j.trim_start_frames
    trims = [f"-{n} {where}" for n, where in ((j.trim_start_frames, "start"), (j.trim_end_frames, "end")) if n]
    trim = f" ({', '.join(trims)})" if trims else ""
    return f"frames {first}-{first + j.frames_kept - 1} render {j.frames_to_render} keep {j.frames_kept}{trim}"
