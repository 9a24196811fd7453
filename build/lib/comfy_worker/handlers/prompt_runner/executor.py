"""Run a chain plan on ComfyUI: HIGH → latent → LOW → segment → reference frame → next HIGH … → join.

The same code runs inside the worker daemon (:mod:`.handler`) and in local CLI runs (:mod:`.cli`); what
differs is the :class:`ChainEnv` they pass (where state is saved, which storage keeps artifacts).

Files: nodes that read or write by absolute path (latent save/load, reference image, combine inputs) see
``{comfy_root}/{plan path}``; ComfyUI's own writers write relative to its output dir, which is ``comfy_root``.
Every artifact a later step needs is also uploaded to storage at ``{storage_prefix}/{plan path}``, and
fetched back into ``comfy_root`` when this machine lacks it (a resume on another machine).

Each step is tried ``1 + max_retries`` times with exponential backoff when its error is retryable; a
permanent error (or the last retryable one) is raised with the step named in its message.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfy_worker.engine import ComfyClient, History, events
from comfy_worker.engine.paths import refuse_unsafe_paths
from comfy_worker.errors import (
    ComfyWorkerError,
    ExecutionFailed,
    ExecutionInterrupted,
    InputRejected,
    LeaseLost,
    WorkflowInvalid,
)
from comfy_worker.handlers.prompt_runner import graph, join
from comfy_worker.handlers.prompt_runner.build import build_job_workflow
from comfy_worker.handlers.prompt_runner.planner import COMBINE, HIGH, LOW, PlanJob
from comfy_worker.handlers.prompt_runner.profile import Profile
from comfy_worker.handlers.prompt_runner.prompt_file import PromptSpec
from comfy_worker.handlers.prompt_runner.state import ChainState, step_label
from comfy_worker.logs import get_logger
from comfy_worker.pathsafe import contained, relative_problem
from comfy_worker.storage import Storage, UploadJournal

log = get_logger(__name__)
StateFn = Callable[[dict[str, Any]], Awaitable[None]]
PROMPT_NAMESPACE = uuid.UUID("0b8a4f5e-93c1-4c7e-8a1e-5d2f6c7b9a10")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".gif", ".avi")


@dataclass
class ChainEnv:
    client: ComfyClient
    storage: Storage
    storage_prefix: str  # "" or e.g. "prompt_runner/{task_id}"
    comfy_root: Path  # ComfyUI's output directory as this process sees it
    work_dir: Path
    save_state: StateFn  # durable (raises LeaseLost when the task is no longer ours)
    progress: StateFn  # best effort
    cancel: asyncio.Event
    started: asyncio.Event | None = None
    step_timeout_s: float = 3600.0
    stall_timeout_s: float = 600.0
    run_key: str = ""  # makes requested prompt ids unique per run/attempt
    # Where artifacts read or written by absolute path (latents, reference frames, segment copies) live, inside
    # ComfyUI's output dir. The daemon gives each task its own, so a chain never picks up another task's file
    # of the same video name (a re-render, or two chains interleaved on one box); default: comfy_root.
    files_root: Path | None = None
    # Task runs: every file-naming value of a step's workflow must be the profile's own or lie under
    # artifacts_root (see comfy_worker.engine.paths). Local CLI runs are the operator's and are not confined.
    confine_paths: bool = True
    input_dir: Path | None = None  # ComfyUI's input folder, when known: names in it are checked for symlinks
    uploads: UploadJournal | None = None  # where large uploads keep their resume point (the task's checkpoint)
    # Runs each upload: a task passes handlers.outputs.stop_when_dropped (a cancelled or lost task stops its
    # upload at once, parts and all); a local CLI run awaits it as it is (Ctrl-C cancels it anyway).
    guard: Callable[[Awaitable[Any], str], Awaitable[Any]] | None = None

    @property
    def artifacts_root(self) -> Path:
        return self.files_root or self.comfy_root


@dataclass(frozen=True)
class ChainOptions:
    max_retries: int = 3
    retry_delay_s: float = 5.0
    keep_intermediate: bool = False
    node_overrides: Mapping[str, Mapping[str, Any]] | None = None  # {node_id: {input: value}}

    @classmethod
    def from_profile(
        cls,
        profile: Profile,
        *,
        max_retries: int | None,
        keep_intermediate: bool,
        node_overrides: Mapping[str, Mapping[str, Any]] | None,
    ) -> ChainOptions:
        """The run's options: ``max_retries`` from the flag / task params, else the profile's
        ``defaults.max_retries``, else 3; the retry delay the profile sets (5 s if it sets none)."""
        if max_retries is None:
            max_retries = profile.defaults.get("max_retries", cls.max_retries)
        return cls(
            max_retries=int(max_retries),
            retry_delay_s=float(profile.defaults.get("retry_delay_s", 5.0)),
            keep_intermediate=bool(keep_intermediate),
            node_overrides=node_overrides,
        )


class ChainRunner:
    def __init__(
        self,
        env: ChainEnv,
        spec: PromptSpec,
        profile: Profile,
        state: ChainState,
        options: ChainOptions,
        object_info: Mapping[str, Any] | None = None,
    ) -> None:
        self.env, self.spec, self.profile, self.state, self.options = env, spec, profile, state, options
        self.plan = state.plan
        self.object_info = object_info

    # --- paths ------------------------------------------------------------------------------------------

    def storage_path(self, plan_path: str) -> str:
        return f"{self.env.storage_prefix}/{plan_path}" if self.env.storage_prefix else plan_path

    def local(self, plan_path: str) -> Path:
        """Where ``plan_path`` lives on this machine. Plan paths come back from the task's checkpoint, which is a
        column of the task row like its params: one that leaves artifacts_root is refused, never opened."""
        path = self.env.artifacts_root / plan_path
        if relative_problem(plan_path) or contained(path, [self.env.artifacts_root]) is None:
            raise InputRejected(
                f"chain path {plan_path!r} leads out of {self.env.artifacts_root}; the saved chain state was not "
                "written by this worker (clear the task's checkpoint to start the video over)",
                details={"path": plan_path},
            )
        return path

    def _own_object(self, stored: str) -> bool:
        """True for storage paths under this chain's prefix (checkpointed paths elsewhere are not ours)."""
        prefix = self.env.storage_prefix
        return not prefix or stored.startswith(f"{prefix}/")

    async def ensure_local(self, plan_path: str) -> Path:
        """``comfy_root/plan_path``, fetched from storage when this machine does not have it."""
        path = self.local(plan_path)
        if path.is_file():
            return path
        stored = self.state.artifacts.get(plan_path)
        if stored is not None and not self._own_object(stored):
            raise InputRejected(
                f"{plan_path}: the saved chain state points at {stored!r}, outside this task's storage "
                f"({self.env.storage_prefix}/); clear the task's checkpoint to start the video over",
                details={"path": plan_path, "storage_path": stored},
            )
        if stored is None:
            raise InputRejected(
                f"{plan_path}: needed by the next step but neither in {self.env.artifacts_root} nor recorded in "
                "storage; the chain state is incomplete (start the video over)",
                details={"path": plan_path},
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        await self.env.storage.download(stored, path)
        log.info("artifact_fetched", plan_path=plan_path, storage_path=stored)
        return path

    async def upload(self, local_path: Path, plan_path: str, *, journal: bool = True) -> Any:
        """Upload ``local_path`` to ``{storage_prefix}/{plan_path}`` through the env's guard; the stored object."""
        work = self.env.storage.upload(
            local_path, self.storage_path(plan_path), journal=self.env.uploads if journal else None
        )
        if self.env.guard is None:
            return await work
        return await self.env.guard(work, f"uploading {plan_path}")

    async def keep(self, local_path: Path, plan_path: str) -> str:
        """Upload an artifact to storage and record it."""
        stored = await self.upload(local_path, plan_path)
        self.state.artifacts[plan_path] = stored.path
        return stored.path

    # --- the chain ---------------------------------------------------------------------------------------

    async def render(self) -> None:
        """Every HIGH/LOW step not yet done, saving the state after each."""
        jobs = self.plan.render_jobs
        todo = [j for j in jobs if not self.state.done(j)]
        if len(todo) < len(jobs):
            log.info("chain_resumed", completed=len(jobs) - len(todo), next=todo[0].job_id if todo else None)
        if not todo and self.env.started is not None:
            self.env.started.set()
        for job in todo:
            await self._step(job)

    async def join(self) -> dict[str, Any]:
        """The final video (ffmpeg concat, or the profile's combine workflow in ComfyUI)."""
        if self.state.final:
            return self.state.final
        await self._progress(self.plan.combine_jobs[-1], phase="joining")
        if self.plan.join_mode == "concat":
            paths = self.plan.combine_jobs[-1].segment_paths
            segments = [await self.ensure_local(p) for p in paths]
            out = self.env.work_dir / "final" / Path(self.plan.final_output_path).name
            lows = {j.video_output_path: j for j in self.plan.render_jobs if j.job_type == LOW}
            keep = [(lows[p].trim_start_frames, lows[p].frames_kept) for p in paths]
            result = await join.join_segments(segments, out, keep=keep)
            frames, mode = result.frames, result.mode
        else:
            for job in self.plan.combine_jobs:
                if not self.state.done(job):
                    await self._step(job)
            out = await self.ensure_local(self.plan.final_output_path)
            frames, mode = await join.count_frames(out), "comfyui"
            if frames != self.plan.total_frames:  # e.g. a combine workflow that interpolates (RIFE) on purpose
                log.warning("final_frame_count", frames=frames, expected=self.plan.total_frames, mode=mode)
        stored = await self.upload(out, self.plan.final_output_path)
        self.state.final = {
            "storage_path": stored.path,
            "url": stored.url,
            "frames": frames,
            "bytes": stored.bytes,
            "mode": mode,
        }
        await self.env.save_state(self.state.to_dict())
        return self.state.final

    async def cleanup(self) -> list[str]:
        """Remove intermediates (latents, segments, references, combined) from storage and ComfyUI's output
        dir, unless keep_intermediate. Returns the storage paths removed."""
        if self.options.keep_intermediate:
            return []
        final = self.plan.final_output_path
        doomed = [p for k, p in self.state.artifacts.items() if k != final and self._own_object(p)]
        if doomed:
            await self.env.storage.delete(doomed)
        for rel in [*self.state.artifacts, *self.state.comfy_files]:
            if rel != final:
                with contextlib.suppress(OSError, InputRejected):
                    self.local(rel).unlink(missing_ok=True)
        log.info("intermediates_removed", count=len(doomed))
        return doomed

    # --- one step ----------------------------------------------------------------------------------------

    async def _step(self, job: PlanJob) -> None:
        label = step_label(self.plan, job)
        tries = 1 + max(0, self.options.max_retries)
        for attempt in range(1, tries + 1):
            if self.env.cancel.is_set():
                raise ExecutionInterrupted(f"step {label} ({job.job_id}): the run was stopped before it started")
            t0 = time.monotonic()
            try:
                await self._progress(job, attempt=attempt)
                await self._run_job(job, attempt)
            except LeaseLost:
                raise
            except ComfyWorkerError as exc:
                if self.env.cancel.is_set() or not exc.retryable or attempt == tries:
                    exc.message = f"step {label} ({job.job_id}, try {attempt}/{tries}): {exc.message}"
                    exc.details.update({"step": label, "job_id": job.job_id, "step_try": attempt})
                    raise
                delay = min(60.0, self.options.retry_delay_s * 2 ** (attempt - 1))
                log.warning("step_retry", step=label, job_id=job.job_id, error=str(exc), retry_in_s=delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.env.cancel.wait(), delay)
                continue
            self.state.completed.append(job.job_id)
            await self.env.save_state(self.state.to_dict())
            log.info("step_complete", step=label, job_id=job.job_id, seconds=round(time.monotonic() - t0, 3))
            return

    async def _run_job(self, job: PlanJob, attempt: int) -> None:
        if job.reference_image_path:
            await self.ensure_local(job.reference_image_path)
        if job.job_type == LOW and job.latent_input_path:
            await self.ensure_local(job.latent_input_path)
        if job.job_type == COMBINE:
            for p in [*job.segment_paths, *([job.previous_combined_path] if job.previous_combined_path else [])]:
                await self.ensure_local(p)
        workflow, _mods = build_job_workflow(
            self.profile,
            job,
            input_video=self.spec.input_video,
            seed=self.spec.seed,
            comfy_output_dir=str(self.env.artifacts_root),
            object_info=self.object_info,
        )
        if job.job_type != COMBINE:
            self._apply_overrides(workflow)
        self._check_node_types(workflow)
        if self.env.confine_paths:
            refuse_unsafe_paths(
                workflow,
                self.object_info,
                roots=[self.env.artifacts_root],
                input_dir=self.env.input_dir,
                trusted=self.profile.combine_workflow if job.job_type == COMBINE else self.profile.base_workflow,
                fetched_urls=False,
            )
        started_at = time.time()
        history = await self._queue_and_wait(job, workflow, attempt)
        if job.job_type == HIGH:
            await self._collect_latent(job, started_at)
        elif job.job_type == LOW:
            await self._collect_segment(job, history)
        else:
            await self._collect_combined(job, history)

    def _check_node_types(self, workflow: graph.Workflow) -> None:
        """Against the live server's /object_info every node type must exist: a missing node pack can never
        succeed, so the step fails at once (the offline build check takes custom types on trust)."""
        if not self.object_info:
            return
        missing = sorted(
            {str(n.get("class_type")) for n in workflow.values() if isinstance(n, dict)} - set(self.object_info)
        )
        if missing:
            raise WorkflowInvalid(
                f"node type(s) {', '.join(missing)} are not installed on this ComfyUI: install the custom node "
                f"pack(s) profile {self.profile.name!r} needs, or use a profile made for this server",
                details={"missing_node_types": missing, "profile": self.profile.name},
            )

    def _apply_overrides(self, workflow: graph.Workflow) -> None:
        for node_id, inputs in (self.options.node_overrides or {}).items():
            if node_id in workflow:
                for name, value in inputs.items():
                    graph.set_input(workflow, node_id, name, value, role="override")

    async def _queue_and_wait(self, job: PlanJob, workflow: graph.Workflow, attempt: int) -> History:
        requested = str(uuid.uuid5(PROMPT_NAMESPACE, f"{self.env.run_key}:{job.job_id}:{attempt}"))
        prompt_id = await self.env.client.queue_prompt(workflow, prompt_id=requested)
        self.state.prompts.setdefault(job.job_id, []).append(prompt_id)
        log.info("step_queued", job_id=job.job_id, prompt_id=prompt_id)

        async def on_event(event: events.Event) -> None:
            if self.env.started is not None:
                self.env.started.set()
            if isinstance(event, events.Progress):
                await self._progress(job, node=event.node, value=event.value, max=event.max, prompt_id=prompt_id)

        return await self.env.client.wait(
            prompt_id,
            on_event=on_event,
            deadline_s=self.env.step_timeout_s,
            stall_s=self.env.stall_timeout_s,
            cancel=self.env.cancel,
        )

    async def _collect_latent(self, job: PlanJob, started_at: float) -> None:
        assert job.latent_output_path
        expected = self.local(job.latent_output_path)
        path = expected if expected.is_file() else _newest(expected.parent, ".latent", started_at)
        if path is None:
            raise ExecutionFailed(
                f"{job.job_id}: the HIGH pass finished but wrote no latent at {expected}; check the profile's "
                "latent_save role (folder/subfolder/filename inputs)",
                details={"expected": str(expected)},
            )
        if path != expected:
            _copy(path, expected)
        await self.keep(expected, job.latent_output_path)

    async def _collect_segment(self, job: PlanJob, history: History) -> None:
        assert job.video_output_path
        src = self._history_video(history, self.profile.roles["video_out"].node, job)
        dest = self.local(job.video_output_path)
        _copy(src, dest)
        frames = await join.count_frames(dest)
        if frames != job.frames_to_render:
            log.warning("segment_frame_count", job_id=job.job_id, frames=frames, expected=job.frames_to_render)
        needed = job.trim_start_frames + (job.frames_kept or 0)
        if frames < needed:  # the joined video would come out short; the same graph would again: fail now
            raise ExecutionFailed(
                f"{job.job_id}: the segment has {frames} frames, fewer than the {needed} the plan keeps from it "
                f"(asked for {job.frames_to_render}); check the profile's frames role",
                details={"frames": frames, "needed": needed, "frames_to_render": job.frames_to_render},
            )
        self.state.segments[job.video_output_path] = frames
        await self.keep(dest, job.video_output_path)
        if job.reference_output_path:
            nxt = next(j for j in self.plan.jobs if j.reference_image_path == job.reference_output_path)
            index = min(max(0, nxt.reference_frame_index or 0), frames - 1)
            ref = self.local(job.reference_output_path)
            await extract_frame(dest, index, ref)
            await self.keep(ref, job.reference_output_path)
            self.state.references[job.reference_output_path] = {
                "frame_index": index,
                "segment": job.video_output_path,
            }

    async def _collect_combined(self, job: PlanJob, history: History) -> None:
        assert job.video_output_path
        src = self._history_video(history, self.profile.combine_roles["writer"].node, job)
        dest = self.local(job.video_output_path)
        _copy(src, dest)
        await self.keep(dest, job.video_output_path)

    def _history_video(self, history: History, node_id: str, job: PlanJob) -> Path:
        """The video file the writer node reported (VHS lists it under ``gifs``; core nodes under others)."""
        entries = history.outputs.get(node_id) or {}
        for items in entries.values() if isinstance(entries, dict) else []:
            for item in items if isinstance(items, list) else []:
                if not isinstance(item, dict) or not str(item.get("filename", "")).lower().endswith(VIDEO_SUFFIXES):
                    continue
                if item.get("type", "output") != "output":
                    continue
                rel = "/".join(p for p in (item.get("subfolder") or "", item["filename"]) if p)
                path = self.env.comfy_root / rel
                if relative_problem(rel) or contained(path, [self.env.comfy_root]) is None:
                    raise ExecutionFailed(  # never copy (and upload) a file from outside the output folder
                        f"{job.job_id}: ComfyUI reported output {rel!r}, which is not inside its output folder",
                        details={"path": rel},
                    )
                self.state.comfy_files.append(rel)
                if not path.is_file():
                    raise ExecutionFailed(
                        f"{job.job_id}: ComfyUI reported {rel} but {path} does not exist; is COMFY_OUTPUT_DIR "
                        "ComfyUI's real output directory?",
                        details={"path": str(path)},
                    )
                return path
        raise ExecutionFailed(
            f"{job.job_id}: node {node_id} produced no video (outputs: {sorted(history.outputs)}); check the "
            "profile's video_out/writer role",
            details={"node_id": node_id},
        )

    async def _progress(self, job: PlanJob, **extra: Any) -> None:
        render = self.plan.render_jobs
        await self.env.progress(
            {
                "step": step_label(self.plan, job),
                "chunk": job.chunk_index + 1,
                "of": self.plan.chunks,
                "job_id": job.job_id,
                "completed_steps": len(self.state.completed),
                "total_steps": len(render) + len(self.plan.combine_jobs if self.plan.join_mode != "concat" else []),
                "video_name": self.plan.video_name,
                **{k: v for k, v in extra.items() if v is not None},
            }
        )


def _newest(folder: Path, suffix: str, since: float) -> Path | None:
    if not folder.is_dir():
        return None
    found = [p for p in folder.iterdir() if p.suffix == suffix and p.stat().st_mtime >= since - 1]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _copy(src: Path, dest: Path) -> None:
    """Copy atomically (a reader never sees half a file)."""
    if src.resolve() == dest.resolve():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dest)


async def extract_frame(video: Path, index: int, dest: Path) -> Path:
    """Frame ``index`` (0-based, by decode order) of ``video`` as a PNG at ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.stem}.tmp.png")
    await join._run(
        "ffmpeg",
        [
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-i",
            join.file_arg(video),
            "-vf",
            f"select=eq(n\\,{index})",
            "-vsync",
            "0",
            "-frames:v",
            "1",
            join.file_arg(tmp),
        ],
        what=f"extract frame {index} of {video.name}",
    )
    if not tmp.is_file():
        raise ExecutionFailed(f"extract frame {index} of {video}: ffmpeg wrote nothing (fewer frames?)")
    tmp.replace(dest)
    return dest
