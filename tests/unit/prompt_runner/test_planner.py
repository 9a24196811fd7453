from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comfy_worker.errors import InputRejected
from comfy_worker.handlers.prompt_runner.planner import (
    COMBINE,
    HIGH,
    LOW,
    Plan,
    PlanJob,
    chunk_count,
    plan,
    render_frame_count,
)
from comfy_worker.handlers.prompt_runner.prompt_file import PromptSpec


def spec(total: int, fpc: int = 101) -> PromptSpec:
    return PromptSpec("vid", total, "pos", "neg", frames_per_chunk=fpc)


def test_500_frames_at_101_is_the_documented_plan():
    p = plan(spec(500))
    assert p.chunks == 5
    highs = [j for j in p.jobs if j.job_type == HIGH]
    lows = [j for j in p.jobs if j.job_type == LOW]
    assert [j.job_number for j in highs] == [1, 3, 5, 7, 9]
    assert [j.job_number for j in lows] == [2, 4, 6, 8, 10]
    assert [j.start_frame for j in highs] == [0, 101, 202, 303, 404]
    # the last chunk covers 96 frames: Wan renders 4k+1, so it renders 97 and keeps 96
    assert [j.frames_to_render for j in lows] == [101, 101, 101, 101, 97]
    assert [j.frames_kept for j in lows] == [101, 101, 101, 101, 96]
    assert [j.trim_end_frames for j in lows] == [0, 0, 0, 0, 1]
    assert [j.frames_kept for j in p.combine_jobs] == [101, 101, 101, 101, 96]
    assert [j.job_number for j in p.combine_jobs] == [11, 12, 13, 14, 15]
    # chunk 1 has no reference; chunk k+1's reference is LOW k's frame at (frames rendered - 10)
    assert highs[0].reference_image_path is None and highs[0].reference_frame_index is None
    assert highs[1].reference_image_path == lows[0].reference_output_path
    assert highs[1].reference_frame_index == 91
    assert lows[1].reference_image_path == highs[1].reference_image_path
    assert lows[0].latent_input_path == highs[0].latent_output_path
    assert p.combine_jobs[-1].video_output_path == p.final_output_path == "vid/final/vid.mp4"
    assert p.combine_jobs[1].previous_combined_path == p.combine_jobs[0].video_output_path
    assert p.combine_jobs[2].segment_paths == [lows[2].video_output_path]


def test_plan_is_json_and_round_trips():
    p = plan(spec(250, 49), overlap=4)
    data = json.loads(json.dumps(p.to_dict()))
    assert Plan.from_dict(data) == p
    assert plan(spec(250, 49), overlap=4) == p  # pure: same input, same plan (ids included)


def test_concat_mode_has_one_combine_after_every_low():
    p = plan(spec(300, 100), join_mode="concat")
    [combine] = p.combine_jobs
    assert combine.job_number == 7
    assert combine.depends_on == [j.job_id for j in p.jobs if j.job_type == LOW]
    assert combine.segment_paths == [j.video_output_path for j in p.jobs if j.job_type == LOW]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"overlap": 101}, "overlap"), ({"overlap": -1}, "overlap"), ({"reference_offset": -1}, "reference_offset"),
     ({"frames_per_chunk": 0}, "frames_per_chunk")],
)  # fmt: skip
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(InputRejected, match=field):
        plan(spec(500), **kwargs)


def closure(p: Plan, job_id: str) -> set[str]:
    by_id = {j.job_id: j for j in p.jobs}
    seen: set[str] = set()
    stack = [job_id]
    while stack:
        for dep in by_id[stack.pop()].depends_on:
            if dep not in seen:
                seen.add(dep)
                stack.append(dep)
    return seen


def is_4k1(n: int) -> bool:
    return n >= 1 and (n - 1) % 4 == 0


@pytest.mark.parametrize(
    ("frames", "rendered"), [(1, 1), (2, 5), (4, 5), (5, 5), (6, 9), (80, 81), (81, 81), (82, 85), (96, 97), (101, 101)]
)
def test_render_frame_count_is_the_next_4k_plus_1(frames, rendered):
    assert render_frame_count(frames) == rendered
    assert render_frame_count(frames, 1) == frames  # a frame_step of 1: any count renders as is


@pytest.mark.parametrize(
    ("total", "fpc", "overlap", "rendered", "kept", "trim_start", "trim_end"),
    [
        (500, 101, 0, [101] * 4 + [97], [101] * 4 + [96], [0] * 5, [0] * 4 + [1]),
        (81, 81, 0, [81], [81], [0], [0]),
        (82, 81, 0, [81, 1], [81, 1], [0, 0], [0, 0]),  # one frame left: 1 is 4·0+1
        (83, 81, 0, [81, 5], [81, 2], [0, 0], [0, 3]),
        (22, 9, 0, [9, 9, 5], [9, 9, 4], [0, 0, 0], [0, 0, 1]),
        (22, 9, 2, [9, 9, 9], [9, 7, 6], [0, 2, 2], [0, 0, 1]),  # starts 0, 7, 14; the last spans 8 → renders 9
        (100, 100, 0, [101], [100], [0], [1]),  # a frames_per_chunk that is not 4k+1 renders the next one
        (250, 100, 10, [101, 101, 73], [100, 90, 60], [0, 10, 10], [1, 1, 3]),  # the last spans 70 (10 overlap)
    ],
)  # fmt: skip
def test_rendered_and_kept_frames(total, fpc, overlap, rendered, kept, trim_start, trim_end):
    p = plan(spec(total, fpc), overlap=overlap, join_mode="concat")
    lows = [j for j in p.jobs if j.job_type == LOW]
    assert [j.frames_to_render for j in lows] == rendered
    assert [j.frames_kept for j in lows] == kept
    assert [j.trim_start_frames for j in lows] == trim_start
    assert [j.trim_end_frames for j in lows] == trim_end
    assert sum(kept) == total


def test_reference_frame_is_counted_from_the_last_kept_frame():
    # frames_per_chunk 100 renders 101 and keeps 100: with offset 1 the reference is frame 99, the last kept one
    p = plan(spec(250, 100), reference_offset=1)
    highs = [j for j in p.jobs if j.job_type == HIGH]
    assert [h.reference_frame_index for h in highs] == [None, 99, 99]


def test_plans_saved_before_frames_kept_still_load():
    """A checkpoint written by an older worker has no frames_kept: it loads, and keeps every frame after the trim."""
    data = plan(spec(25, 9)).to_dict()
    for job in data["jobs"]:
        job.pop("frames_kept")
    data.pop("frame_step")
    old = Plan.from_dict(data)
    assert all(j.frames_kept is None and j.trim_end_frames == 0 for j in old.jobs)
    assert isinstance(old.jobs[0], PlanJob) and old.frame_step == 4


@settings(max_examples=400, deadline=None)
@given(
    total=st.integers(1, 2000),
    fpc=st.integers(1, 160),
    overlap_frac=st.floats(0, 0.9),
    offset=st.integers(0, 50),
    mode=st.sampled_from(["progressive", "concat"]),
)
def test_plan_invariants(total, fpc, overlap_frac, offset, mode):
    overlap = min(int(fpc * overlap_frac), fpc - 1)
    p = plan(spec(total, fpc), overlap=overlap, reference_offset=offset, join_mode=mode)
    n = p.chunks
    assert n == chunk_count(total, fpc, overlap)
    if overlap == 0:
        assert n == -(-total // fpc)
    highs = [j for j in p.jobs if j.job_type == HIGH]
    lows = [j for j in p.jobs if j.job_type == LOW]
    combines = [j for j in p.jobs if j.job_type == COMBINE]
    assert len(highs) == len(lows) == n
    assert len(combines) == (n if mode == "progressive" else 1)
    # numbering: HIGH odd, LOW even, in chunk order, then combines; numbers are 1..len(jobs)
    assert [j.job_number for j in highs] == [2 * k + 1 for k in range(n)]
    assert [j.job_number for j in lows] == [2 * k + 2 for k in range(n)]
    assert [j.job_number for j in p.jobs] == list(range(1, len(p.jobs) + 1))
    assert len({j.job_id for j in p.jobs}) == len(p.jobs)
    # frames: every chunk renders 4k+1 frames, at least what it keeps plus its overlap, and less than 4 more;
    # the kept frames are contiguous (no gap, no double count) and add up to exactly the total
    covered = 0
    for k, (h, lo) in enumerate(zip(highs, lows, strict=True)):
        assert (h.frames_to_render, h.start_frame, h.frames_kept) == (
            lo.frames_to_render,
            lo.start_frame,
            lo.frames_kept,
        )
        span = lo.trim_start_frames + lo.frames_kept
        assert is_4k1(lo.frames_to_render), lo.frames_to_render
        assert lo.frames_kept >= 1
        assert span <= lo.frames_to_render < span + 4
        assert lo.trim_end_frames == lo.frames_to_render - span >= 0
        assert span <= fpc
        assert lo.start_frame == k * (fpc - overlap)
        assert lo.trim_start_frames == (overlap if k else 0)
        assert lo.start_frame + lo.trim_start_frames == covered  # no gap, no double count
        covered = lo.start_frame + span
    assert covered == total
    assert sum(lo.frames_kept for lo in lows) == total
    assert all(lo.trim_start_frames + lo.frames_kept == fpc for lo in lows[:-1])  # only the last chunk is shorter
    if mode == "progressive":
        assert [c.frames_kept for c in combines] == [lo.frames_kept for lo in lows]
        assert [c.trim_start_frames for c in combines] == [lo.trim_start_frames for lo in lows]
    # dependencies: LOW k after HIGH k, HIGH k+1 after LOW k, every combine after every render job
    assert highs[0].depends_on == []
    for k in range(n):
        assert lows[k].depends_on == [highs[k].job_id]
        if k + 1 < n:
            assert highs[k + 1].depends_on == [lows[k].job_id]
            kept_end = lows[k].trim_start_frames + lows[k].frames_kept
            assert highs[k + 1].reference_frame_index == max(0, kept_end - offset)
    renders = {j.job_id for j in highs + lows}
    assert renders <= closure(p, combines[0].job_id)  # the first combine waits for every render job
    for prev, c in itertools.pairwise(combines):
        assert prev.job_id in c.depends_on  # and the others follow it
    assert combines[-1].video_output_path == p.final_output_path
