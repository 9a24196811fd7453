"""The chain plan: a pure function from a :class:`PromptSpec` to the ordered jobs that render it.

For ``n`` chunks the plan holds HIGH jobs 1, 3, …, 2n-1 and LOW jobs 2, 4, …, 2n (HIGH k+1 follows LOW k,
because its reference frame comes from LOW k's segment), then the combine step(s): one ``concat`` job that
joins every segment with ffmpeg, or ``n`` progressive combine jobs (combine k appends segment k to the
video combined so far, as the documented ComfyUI combine workflow does).

Frames. With ``fpc`` frames per chunk and an overlap of ``v`` frames, chunk ``k`` (0-based) starts at
``k·(fpc - v)`` and spans ``fpc`` frames of the video (the last chunk: what is left); its first ``v`` frames
repeat the end of the previous chunk. The number of chunks is ``ceil((total - v) / (fpc - v))``, which is
``ceil(total / fpc)`` without overlap. Wan renders ``4k+1`` frames (its VAE packs 4 frames into one latent
after the first), so every chunk *renders* the smallest ``4k+1`` at least its span
(:func:`render_frame_count`) and *keeps* ``frames_kept`` of them: it drops its first ``v`` (``trim_start_frames``,
chunks after the first) and any surplus at its end (``trim_end_frames``, e.g. the last chunk of a total that is
not ``4k+1``). The kept frames of all chunks add up to exactly ``total_frames``; the join (ffmpeg, or the
combine workflow's skip/cap inputs) trims the rest. The reference frame that conditions chunk k+1 is taken
from segment k at index ``trim_start + frames_kept - reference_offset`` (its last kept frame with offset 1).

Paths in the plan are relative to the output root, under the video's name: ``{video}/latents/…``,
``{video}/videos/…``, ``{video}/references/…``, ``{video}/combined/…``, ``{video}/final/…``.
The plan is JSON-serialisable (:meth:`Plan.to_dict` / :meth:`Plan.from_dict`) and stored with the task.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from comfy_worker.errors import InputRejected
from comfy_worker.handlers.prompt_runner.prompt_file import DEFAULT_FRAMES_PER_CHUNK, PromptSpec

HIGH = "high_noise_render"
LOW = "low_noise_render"
COMBINE = "combine"
JoinMode = Literal["progressive", "concat"]
WAN_FRAME_STEP = 4  # Wan renders 4k+1 frames: one latent frame per 4 video frames, after the first


@dataclass(frozen=True)
class PlanJob:
    job_id: str
    job_number: int
    job_type: str
    chunk_index: int  # 0-based; for a concat combine: the last chunk
    frames_to_render: int
    start_frame: int
    prompts: dict[str, str]
    latent_input_path: str | None = None  # LOW: the HIGH latent it refines
    latent_output_path: str | None = None  # HIGH: where its latent goes
    reference_image_path: str | None = None  # the frame conditioning this chunk (None for chunk 0)
    reference_frame_index: int | None = None  # index of that frame inside the previous segment
    video_output_path: str | None = None  # LOW: the segment; combine: the combined video
    reference_output_path: str | None = None  # LOW: where the next chunk's reference frame goes
    segment_paths: list[str] = field(default_factory=list)  # combine: segments it joins (in order)
    previous_combined_path: str | None = None  # progressive combine k>0: the video combined so far
    trim_start_frames: int = 0  # frames to drop from the start of this segment when joining (the overlap)
    depends_on: list[str] = field(default_factory=list)
    # Frames of this chunk's segment that end up in the video: segment frames
    # [trim_start_frames, trim_start_frames + frames_kept). None (plans saved before it existed): all after the trim.
    frames_kept: int | None = None

    @property
    def trim_end_frames(self) -> int:
        """Surplus frames rendered past the kept ones (dropped at the join)."""
        if self.frames_kept is None or not self.frames_to_render:
            return 0
        return self.frames_to_render - self.trim_start_frames - self.frames_kept

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    video_name: str
    total_frames: int
    frames_per_chunk: int
    overlap: int
    reference_offset: int
    chunks: int
    join_mode: str
    final_output_path: str
    jobs: list[PlanJob]
    frame_step: int = WAN_FRAME_STEP  # rendered counts are frame_step·k + 1 (1: any count)

    @property
    def render_jobs(self) -> list[PlanJob]:
        return [j for j in self.jobs if j.job_type in (HIGH, LOW)]

    @property
    def combine_jobs(self) -> list[PlanJob]:
        return [j for j in self.jobs if j.job_type == COMBINE]

    def job(self, job_id: str) -> PlanJob:
        for j in self.jobs:
            if j.job_id == job_id:
                return j
        raise KeyError(job_id)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        values = dict(data)
        values["jobs"] = [PlanJob(**j) for j in values["jobs"]]
        return cls(**values)


def chunk_count(total_frames: int, frames_per_chunk: int, overlap: int = 0) -> int:
    step = frames_per_chunk - overlap
    return max(1, -(-(total_frames - overlap) // step))


def render_frame_count(frames: int, frame_step: int = WAN_FRAME_STEP) -> int:
    """The smallest ``frame_step·k + 1`` >= ``frames``: what a chunk spanning ``frames`` frames renders
    (``4k+1`` for Wan: 96 → 97, 101 → 101, 2 → 5)."""
    if frame_step <= 1 or frames <= 1:
        return max(1, frames)
    return frame_step * (-(-(frames - 1) // frame_step)) + 1


def _check(total: int, fpc: int, overlap: int, offset: int) -> None:
    if total < 1:
        raise InputRejected(f"total_frames: must be >= 1, got {total}", details={"field": "total_frames"})
    if fpc < 1:
        raise InputRejected(f"frames_per_chunk: must be >= 1, got {fpc}", details={"field": "frames_per_chunk"})
    if not 0 <= overlap < fpc:
        raise InputRejected(
            f"overlap: must be >= 0 and smaller than frames_per_chunk ({fpc}), got {overlap}",
            details={"field": "overlap"},
        )
    if offset < 0:
        raise InputRejected(f"reference_offset: must be >= 0, got {offset}", details={"field": "reference_offset"})


def plan(
    spec: PromptSpec,
    *,
    frames_per_chunk: int | None = None,
    overlap: int = 0,
    reference_offset: int = 10,
    join_mode: JoinMode = "progressive",
    frame_step: int = WAN_FRAME_STEP,
) -> Plan:
    """The jobs rendering ``spec``. ``frames_per_chunk`` defaults to the spec's own value, else the built-in
    default (the profile's default is applied by :func:`~.dryrun.plan_for`)."""
    fpc = spec.frames_per_chunk if frames_per_chunk is None else frames_per_chunk
    if fpc is None:
        fpc = DEFAULT_FRAMES_PER_CHUNK
    total, name = spec.total_frames, spec.video_name
    _check(total, fpc, overlap, reference_offset)
    if frame_step < 1:
        raise InputRejected(f"frame_step: must be >= 1, got {frame_step}", details={"field": "frame_step"})
    if join_mode not in ("progressive", "concat"):
        raise InputRejected(f"join_mode: expected progressive or concat, got {join_mode!r}")
    n = chunk_count(total, fpc, overlap)
    prompts = {"positive": spec.positive_prompt, "negative": spec.negative_prompt}
    jobs: list[PlanJob] = []
    segments: list[str] = []
    kept_frames: list[int] = []
    prev_low: PlanJob | None = None
    for k in range(n):
        c = k + 1
        start = k * (fpc - overlap)
        span = min(fpc, total - start)  # frames of the video this chunk covers, its overlap included
        trim = overlap if k else 0
        kept = span - trim
        frames = render_frame_count(span, frame_step)
        latent = f"{name}/latents/chunk_{c:03d}/{name}_chunk_{c:03d}_high.latent"
        reference = prev_low.reference_output_path if prev_low else None
        ref_index = None
        if prev_low is not None:
            prev_end = prev_low.trim_start_frames + (prev_low.frames_kept or 0)  # its last kept frame + 1
            ref_index = max(0, prev_end - reference_offset)
        high = PlanJob(
            job_id=f"{name}-{2 * k + 1:03d}-high",
            job_number=2 * k + 1,
            job_type=HIGH,
            chunk_index=k,
            frames_to_render=frames,
            start_frame=start,
            prompts=dict(prompts),
            latent_output_path=latent,
            reference_image_path=reference,
            reference_frame_index=ref_index,
            trim_start_frames=trim,
            depends_on=[prev_low.job_id] if prev_low else [],
            frames_kept=kept,
        )
        low = PlanJob(
            job_id=f"{name}-{2 * k + 2:03d}-low",
            job_number=2 * k + 2,
            job_type=LOW,
            chunk_index=k,
            frames_to_render=frames,
            start_frame=start,
            prompts=dict(prompts),
            latent_input_path=latent,
            reference_image_path=reference,
            reference_frame_index=ref_index,
            video_output_path=f"{name}/videos/{name}_chunk_{c:03d}.mp4",
            reference_output_path=f"{name}/references/{name}_chunk_{c:03d}_ref.png" if c < n else None,
            trim_start_frames=trim,
            depends_on=[high.job_id],
            frames_kept=kept,
        )
        jobs += [high, low]
        segments.append(low.video_output_path or "")
        kept_frames.append(kept)
        prev_low = low
    final = f"{name}/final/{name}.mp4"
    number = 2 * n
    last_low = jobs[-1]
    if join_mode == "concat":
        jobs.append(
            PlanJob(
                job_id=f"{name}-{number + 1:03d}-combine",
                job_number=number + 1,
                job_type=COMBINE,
                chunk_index=n - 1,
                frames_to_render=0,
                start_frame=0,
                prompts={"positive": "", "negative": ""},
                video_output_path=final,
                segment_paths=list(segments),
                trim_start_frames=overlap,
                depends_on=[j.job_id for j in jobs if j.job_type == LOW],
            )
        )
    else:
        previous: PlanJob | None = None
        for k in range(n):
            c = k + 1
            out = final if c == n else f"{name}/combined/{name}_combined_{c:03d}.mp4"
            job = PlanJob(
                job_id=f"{name}-{number + c:03d}-combine",
                job_number=number + c,
                job_type=COMBINE,
                chunk_index=k,
                frames_to_render=0,
                start_frame=0,
                prompts={"positive": "", "negative": ""},
                video_output_path=out,
                segment_paths=[segments[k]],
                previous_combined_path=previous.video_output_path if previous else None,
                trim_start_frames=overlap if k else 0,
                depends_on=[previous.job_id] if previous else [last_low.job_id],
                frames_kept=kept_frames[k],
            )
            jobs.append(job)
            previous = job
    return Plan(
        video_name=name,
        total_frames=total,
        frames_per_chunk=fpc,
        overlap=overlap,
        reference_offset=reference_offset,
        chunks=n,
        join_mode=join_mode,
        final_output_path=final,
        jobs=jobs,
        frame_step=frame_step,
    )
