"""The durable record of a chain run: what is done and where its artifacts are.

Saved after every step (the task's checkpoint in the daemon; ``state/{video_name}.json`` in local runs) so a
run that dies resumes after its last completed step — on another machine too, since every artifact the next
steps need (latents, segments, reference frames) is in storage under the plan's relative path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from comfy_worker.handlers.prompt_runner.planner import HIGH, LOW, Plan, PlanJob

STATE_VERSION = 1


@dataclass
class ChainState:
    plan: Plan
    completed: list[str] = field(default_factory=list)  # job ids, in the order they completed
    artifacts: dict[str, str] = field(default_factory=dict)  # plan path → storage path
    references: dict[str, dict[str, Any]] = field(default_factory=dict)  # plan path → {frame_index, segment}
    segments: dict[str, int] = field(default_factory=dict)  # segment plan path → frames in it
    prompts: dict[str, list[str]] = field(default_factory=dict)  # job id → ComfyUI prompt ids (every try)
    comfy_files: list[str] = field(default_factory=list)  # files ComfyUI wrote, relative to its output dir
    final: dict[str, Any] | None = None  # {storage_path, url, frames, mode} once joined

    def done(self, job: PlanJob) -> bool:
        return job.job_id in self.completed

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "video_name": self.plan.video_name,
            "plan": self.plan.to_dict(),
            "completed": list(self.completed),
            "completed_chunks": self.completed_chunks,
            "artifacts": dict(self.artifacts),
            "references": dict(self.references),
            "segments": dict(self.segments),
            "prompts": {k: list(v) for k, v in self.prompts.items()},
            "comfy_files": list(self.comfy_files),
            "final": self.final,
        }

    @property
    def completed_chunks(self) -> int:
        """Chunks whose LOW pass (and so segment and next reference) is done."""
        return sum(1 for j in self.plan.jobs if j.job_type == LOW and j.job_id in self.completed)

    @classmethod
    def restore(cls, data: dict[str, Any] | None, plan: Plan) -> ChainState:
        """The saved state, or a fresh one for ``plan``. A saved plan wins over a recomputed one (the chain
        must continue with the chunking it started with, even if the profile changed since)."""
        if not data or data.get("version") != STATE_VERSION or not data.get("plan"):
            return cls(plan)
        saved = Plan.from_dict(data["plan"])
        if saved.video_name != plan.video_name:
            return cls(plan)
        return cls(
            plan=saved,
            completed=[str(j) for j in data.get("completed") or []],
            artifacts={str(k): str(v) for k, v in (data.get("artifacts") or {}).items()},
            references=dict(data.get("references") or {}),
            segments={str(k): int(v) for k, v in (data.get("segments") or {}).items()},
            prompts={str(k): [str(p) for p in v] for k, v in (data.get("prompts") or {}).items()},
            comfy_files=[str(p) for p in data.get("comfy_files") or []],
            final=data.get("final"),
        )


def step_label(plan: Plan, job: PlanJob) -> str:
    """``HIGH 3/5``, ``LOW 4/5``, ``combine 2/5`` or ``join``."""
    kind = {HIGH: "HIGH", LOW: "LOW"}.get(job.job_type)
    if kind:
        return f"{kind} {job.chunk_index + 1}/{plan.chunks}"
    if plan.join_mode == "concat":
        return "join"
    return f"combine {job.chunk_index + 1}/{plan.chunks}"


def summary(plan: Plan) -> dict[str, Any]:
    return {
        "video_name": plan.video_name,
        "total_frames": plan.total_frames,
        "frames_per_chunk": plan.frames_per_chunk,
        "frames_rendered": [j.frames_to_render for j in plan.render_jobs if j.job_type == LOW],
        "frames_kept": [j.frames_kept for j in plan.render_jobs if j.job_type == LOW],
        "overlap": plan.overlap,
        "reference_offset": plan.reference_offset,
        "chunks": plan.chunks,
        "join_mode": plan.join_mode,
        "jobs": [j.job_id for j in plan.jobs],
    }
